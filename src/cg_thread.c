#include "cg_thread.h"

#include <errno.h>
#include <signal.h>
#include <time.h>

int cg_thread_start(pthread_t *thread, void *(*fn)(void *), void *arg)
{
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old);
    int rc = pthread_create(thread, NULL, fn, arg);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    return rc == 0 ? 0 : -1;
}

int cg_thread_nap(pthread_mutex_t *lock, pthread_cond_t *cond, const int *stop, int ms)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += ms / 1000;
    ts.tv_nsec += (long)(ms % 1000) * 1000000L;
    if (ts.tv_nsec >= 1000000000L) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000L;
    }
    pthread_mutex_lock(lock);
    while (!*stop && pthread_cond_timedwait(cond, lock, &ts) != ETIMEDOUT)
        ;
    int stopping = *stop;
    pthread_mutex_unlock(lock);
    return stopping;
}
