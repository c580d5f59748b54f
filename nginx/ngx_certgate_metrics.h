/*
 * The nginx metrics endpoint (certgate_metrics): the core's counters in one
 * shared memory zone for all workers, rendered by the core as on httpd.
 */
#ifndef NGX_CERTGATE_METRICS_H
#define NGX_CERTGATE_METRICS_H

#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "cg_gate.h"

/* Add the counters' zone (once per configuration); NULL on error (logged). */
ngx_shm_zone_t *cg_ngx_metrics_zone(ngx_conf_t *cf, void *tag);
/* The zone's counters in this worker, or NULL without a zone. */
cg_metrics_t *cg_ngx_metrics_shared(ngx_shm_zone_t *zone);
/* The certgate_metrics directive's work: the location's content handler. */
char *cg_ngx_metrics_location(ngx_conf_t *cf);

/* This worker's gate (NULL before it is set up); the module provides it. */
cg_gate_t *cg_ngx_gate(void);

#endif
