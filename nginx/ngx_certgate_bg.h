/*
 * The gate's background work on the worker's event loop, when no sentinels
 * are configured: the usage flush (a timer) and the invalidation subscriber
 * (a hiredis async context of its own), so that the worker runs no thread of
 * ours and glibc keeps its single-threaded paths.
 */
#ifndef NGX_CERTGATE_BG_H
#define NGX_CERTGATE_BG_H

#include <ngx_config.h>
#include <ngx_core.h>

#include "cg_gate.h"
#include "ngx_certgate_redis.h"

/* After cg_gate_start of a gate made with cfg.loop_bg. conf outlives it. */
void cg_ngx_bg_start(ngx_cycle_t *cycle, cg_gate_t *g, const cg_ngx_redis_conf_t *conf,
                     int usage_interval_s);
/* Worker exit, before cg_gate_free (which writes the last usage batch):
 * timers off, contexts closed (nginx alerts on sockets left open). */
void cg_ngx_bg_stop(void);

#endif
