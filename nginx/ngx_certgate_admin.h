/* What the admin module (ngx_certgate_admin.c) takes from the gate module. */
#ifndef NGX_CERTGATE_ADMIN_H
#define NGX_CERTGATE_ADMIN_H

#include <ngx_config.h>
#include <ngx_core.h>

#include "cg_gate.h"

/* The http block's Redis settings (certgate_redis...), as the gate uses them.
 * NGX_ERROR when the cycle has no http block. */
ngx_int_t cg_ngx_store_cfg(ngx_cycle_t *cycle, cg_gate_cfg_t *out);
cg_metrics_t *cg_ngx_core_events(ngx_cycle_t *cycle);

#endif
