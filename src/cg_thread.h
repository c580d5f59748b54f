/* Background threads of the core (invalidation subscriber, usage flusher). */
#ifndef CG_THREAD_H
#define CG_THREAD_H

#include <pthread.h>

/*
 * Start a thread with every signal blocked: a server's process signals
 * (SIGTERM, graceful restart...) must reach the server's own threads, never
 * ours, or its handlers would run under its feet. 0 on success.
 */
int cg_thread_start(pthread_t *thread, void *(*fn)(void *), void *arg);

/* Sleep up to ms on cond unless *stop is set (both under lock). Returns *stop. */
int cg_thread_nap(pthread_mutex_t *lock, pthread_cond_t *cond, const int *stop, int ms);

#endif
