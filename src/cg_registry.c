#include "cg_registry.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cg_reg.h"

void cg_key(char *out, const cg_store_t *st, const char *fmt, ...)
{
    va_list ap;
    int n = snprintf(out, CG_KEY_MAX, "%s", cg_store_prefix(st));
    va_start(ap, fmt);
    vsnprintf(out + n, CG_KEY_MAX - (size_t)n, fmt, ap);
    va_end(ap);
}

/* ------------------------------------------------------------ write scripts */

/*
 * Every write script starts with GUARD: Redis does not roll a script back when
 * a command fails half-way, so each key it will touch is checked for its type
 * (and counters and versions for their format) before the first write. A bad
 * key answers "BADKEY <key>": 500 Store.Corrupt, nothing written.
 * guard{{key, kind}, ...}: kind is a Redis type, or 'int' for a string counter.
 * intf(key, field): the hash field is absent or an integer.
 */
#define LUA_GUARD \
    "local function isint(v) return v ~= nil and string.match(v, '^%-?%d+$') ~= nil " \
    "and #v < 18 end\n" \
    "local function guard(spec)\n" \
    "  for _, s in ipairs(spec) do\n" \
    "    local t = redis.call('TYPE', s[1])\n" \
    "    if type(t) == 'table' then t = t.ok end\n" \
    "    if t ~= 'none' then\n" \
    "      if s[2] == 'int' then\n" \
    "        if t ~= 'string' or not isint(redis.call('GET', s[1])) then return s[1] end\n" \
    "      elseif t ~= s[2] then return s[1] end\n" \
    "    end\n" \
    "  end\n" \
    "end\n" \
    "local function intf(k, f)\n" \
    "  local v = redis.call('HGET', k, f)\n" \
    "  return v == false or isint(v)\n" \
    "end\n" \
    "local function bad(k) return redis.error_reply('BADKEY ' .. k) end\n" \
    "local function bump(k)\n" \
    "  redis.call('HSET', k, 'version', tonumber(redis.call('HGET', k, 'version') or '1') + 1)\n" \
    "end\n" \
    "local function ifmatch(cond, ver)\n" \
    "  if cond == '' or cond == '*' then return true end\n" \
    "  for t in string.gmatch(cond, '[^,]+') do\n" \
    "    if t == 'v' .. (ver or '1') then return true end\n" \
    "  end\n" \
    "  return false\n" \
    "end\n"

/* KEYS: fp, reg, app set, regs, events, gen, schema, appinfo.
 * ARGV: id, channel, customer, n, n record words, event words. */
const char CG_LUA_UPLOAD[] = LUA_GUARD
    "local b = guard({{KEYS[1], 'string'}, {KEYS[2], 'hash'}, {KEYS[3], 'set'},\n"
    "  {KEYS[4], 'set'}, {KEYS[5], 'stream'}, {KEYS[6], 'int'}, {KEYS[7], 'string'},\n"
    "  {KEYS[8], 'hash'}})\n"
    "if b then return bad(b) end\n"
    "if redis.call('EXISTS', KEYS[1]) == 1 then return redis.error_reply('DUPLICATE') end\n"
    "if redis.call('HGET', KEYS[8], 'customer_id') ~= ARGV[3] then\n"
    "  return redis.error_reply('APPOWNER') end\n"
    "local n = tonumber(ARGV[4])\n"
    "local rec = {}\n"
    "for i = 5, 4 + n do rec[#rec + 1] = ARGV[i] end\n"
    "redis.call('HSET', KEYS[2], unpack(rec))\n"
    "redis.call('SET', KEYS[1], ARGV[1])\n"
    "redis.call('SADD', KEYS[3], ARGV[1])\n"
    "redis.call('SADD', KEYS[4], ARGV[1])\n"
    "redis.call('SET', KEYS[7], '1')\n"
    "local ev = {}\n"
    "for i = 5 + n, #ARGV do ev[#ev + 1] = ARGV[i] end\n"
    "redis.call('XADD', KEYS[5], '*', unpack(ev))\n"
    "redis.call('INCR', KEYS[6])\n"
    "local t = redis.call('TIME')\n"
    "local ms = ' ' .. (t[1] * 1000 + math.floor(t[2] / 1000))\n"
    "redis.call('PUBLISH', ARGV[2], redis.call('HGET', KEYS[2], 'fingerprint') .. ms)\n"
    "return 'OK'\n";

/*
 * An import's record: the upload's write, idempotent by fingerprint. KEYS as
 * CG_LUA_UPLOAD. ARGV: id, channel, customer, app, registration key prefix,
 * dry ('1': every check, no write), n, n record words, event words. The
 * fingerprint registered to the same app and customer answers "UNCHANGED <id>"
 * and writes nothing; registered elsewhere, DUPLICATE; the id taken, IDTAKEN.
 */
const char CG_LUA_IMPORT[] = LUA_GUARD
    "local b = guard({{KEYS[1], 'string'}, {KEYS[2], 'hash'}, {KEYS[3], 'set'},\n"
    "  {KEYS[4], 'set'}, {KEYS[5], 'stream'}, {KEYS[6], 'int'}, {KEYS[7], 'string'},\n"
    "  {KEYS[8], 'hash'}})\n"
    "if b then return bad(b) end\n"
    "local cur = redis.call('GET', KEYS[1])\n"
    "if cur then\n"
    "  local k = ARGV[5] .. cur\n"
    "  local t = redis.call('TYPE', k)\n"
    "  if type(t) == 'table' then t = t.ok end\n"
    "  if t ~= 'none' and t ~= 'hash' then return bad(k) end\n"
    "  local c = redis.call('HMGET', k, 'app_id', 'customer_id')\n"
    "  if c[1] == ARGV[4] and (c[2] or '') == ARGV[3] then return 'UNCHANGED ' .. cur end\n"
    "  return redis.error_reply('DUPLICATE')\n"
    "end\n"
    "if redis.call('EXISTS', KEYS[2]) == 1 then return redis.error_reply('IDTAKEN') end\n"
    "if redis.call('HGET', KEYS[8], 'customer_id') ~= ARGV[3] then\n"
    "  return redis.error_reply('APPOWNER') end\n"
    "if ARGV[6] == '1' then return 'DRYRUN' end\n"
    "local n = tonumber(ARGV[7])\n"
    "local rec = {}\n"
    "for i = 8, 7 + n do rec[#rec + 1] = ARGV[i] end\n"
    "redis.call('HSET', KEYS[2], unpack(rec))\n"
    "redis.call('SET', KEYS[1], ARGV[1])\n"
    "redis.call('SADD', KEYS[3], ARGV[1])\n"
    "redis.call('SADD', KEYS[4], ARGV[1])\n"
    "redis.call('SET', KEYS[7], '1')\n"
    "local ev = {}\n"
    "for i = 8 + n, #ARGV do ev[#ev + 1] = ARGV[i] end\n"
    "redis.call('XADD', KEYS[5], '*', unpack(ev))\n"
    "redis.call('INCR', KEYS[6])\n"
    "local t = redis.call('TIME')\n"
    "local ms = ' ' .. (t[1] * 1000 + math.floor(t[2] / 1000))\n"
    "redis.call('PUBLISH', ARGV[2], redis.call('HGET', KEYS[2], 'fingerprint') .. ms)\n"
    "return 'OK'\n";

/* KEYS: reg, events, gen. ARGV: from (list), to, If-Match condition, now, user, reason,
 * channel, event words. */
const char CG_LUA_TRANSITION[] = LUA_GUARD
    "local b = guard({{KEYS[1], 'hash'}, {KEYS[2], 'stream'}, {KEYS[3], 'int'}})\n"
    "if b then return bad(b) end\n"
    "if not intf(KEYS[1], 'version') then return bad(KEYS[1]) end\n"
    "local cur = redis.call('HMGET', KEYS[1], 'status', 'version', 'fingerprint')\n"
    "if not cur[1] then return redis.error_reply('NOTFOUND') end\n"
    "if not ifmatch(ARGV[3], cur[2]) then return redis.error_reply('PRECONDITION') end\n"
    "local ok = false\n"
    "for s in string.gmatch(ARGV[1], '[^,]+') do if s == cur[1] then ok = true end end\n"
    "if not ok then return redis.error_reply('CONFLICT ' .. cur[1]) end\n"
    "local v = tonumber(cur[2] or '1') + 1\n"
    "redis.call('HSET', KEYS[1], 'status', ARGV[2], 'version', v, 'updated', ARGV[4],\n"
    "           'updated_by', ARGV[5], 'status_reason', ARGV[6])\n"
    "local ev = {'old_status', cur[1], 'new_status', ARGV[2]}\n"
    "for i = 8, #ARGV do ev[#ev + 1] = ARGV[i] end\n"
    "redis.call('XADD', KEYS[2], '*', unpack(ev))\n"
    "redis.call('INCR', KEYS[3])\n"
    "local t = redis.call('TIME')\n"
    "redis.call('PUBLISH', ARGV[7], (cur[3] or '') .. ' ' .. (t[1] * 1000 + math.floor(t[2] / 1000)))\n"
    "return v\n";

/* KEYS: new reg, old reg, rotation, rotations, events, gen, appinfo.
 * ARGV: app, new id, old id, activate, retire, now, user, rotation id, channel, event. */
const char CG_LUA_ROTATE[] = LUA_GUARD
    "local b = guard({{KEYS[1], 'hash'}, {KEYS[2], 'hash'}, {KEYS[3], 'hash'}, {KEYS[4], 'zset'},\n"
    "  {KEYS[5], 'stream'}, {KEYS[6], 'int'}, {KEYS[7], 'hash'}})\n"
    "if b then return bad(b) end\n"
    "for i = 1, 2 do if not intf(KEYS[i], 'version') then return bad(KEYS[i]) end end\n"
    "local new = redis.call('HMGET', KEYS[1], 'status', 'app_id', 'activate_at', 'fingerprint',\n"
    "  'customer_id')\n"
    "local old = redis.call('HMGET', KEYS[2], 'status', 'app_id', 'retire_at', 'fingerprint',\n"
    "  'customer_id')\n"
    "if not new[1] or not old[1] then return redis.error_reply('NOTFOUND') end\n"
    "if new[2] ~= ARGV[1] or old[2] ~= ARGV[1] then return redis.error_reply('NOTINAPP') end\n"
    "local owner = redis.call('HGET', KEYS[7], 'customer_id')\n"
    "if new[5] ~= owner or old[5] ~= owner then return redis.error_reply('NOTINAPP') end\n"
    "if new[1] ~= 'APPROVED' then return redis.error_reply('NEWNOTAPPROVED ' .. new[1]) end\n"
    "if old[1] ~= 'APPROVED' then return redis.error_reply('OLDNOTAPPROVED ' .. old[1]) end\n"
    "redis.call('HSET', KEYS[3], 'id', ARGV[8], 'app_id', ARGV[1], 'new_cert_id', ARGV[2],\n"
    "  'old_cert_id', ARGV[3], 'activate_at', ARGV[4], 'retire_old_at', ARGV[5],\n"
    "  'created', ARGV[6], 'created_by', ARGV[7], 'status', 'SCHEDULED',\n"
    "  'prev_new_activate_at', new[3] or '', 'prev_old_retire_at', old[3] or '')\n"
    "redis.call('ZADD', KEYS[4], ARGV[6], ARGV[8])\n"
    "redis.call('HSET', KEYS[1], 'activate_at', ARGV[4], 'updated', ARGV[6], 'updated_by', ARGV[7])\n"
    "bump(KEYS[1])\n"
    "redis.call('HSET', KEYS[2], 'retire_at', ARGV[5], 'updated', ARGV[6], 'updated_by', ARGV[7])\n"
    "bump(KEYS[2])\n"
    "local ev = {}\n"
    "for i = 10, #ARGV do ev[#ev + 1] = ARGV[i] end\n"
    "redis.call('XADD', KEYS[5], '*', unpack(ev))\n"
    "redis.call('INCR', KEYS[6])\n"
    "local t = redis.call('TIME')\n"
    "local ms = ' ' .. (t[1] * 1000 + math.floor(t[2] / 1000))\n"
    "redis.call('PUBLISH', ARGV[9], (new[4] or '') .. ms)\n"
    "redis.call('PUBLISH', ARGV[9], (old[4] or '') .. ms)\n"
    "return 'OK'\n";

/* KEYS: rotation, new reg, old reg, events, gen. ARGV: now, user, app, channel, event. */
const char CG_LUA_CANCEL[] = LUA_GUARD
    "local b = guard({{KEYS[1], 'hash'}, {KEYS[2], 'hash'}, {KEYS[3], 'hash'},\n"
    "  {KEYS[4], 'stream'}, {KEYS[5], 'int'}})\n"
    "if b then return bad(b) end\n"
    "for i = 2, 3 do if not intf(KEYS[i], 'version') then return bad(KEYS[i]) end end\n"
    "local rot = redis.call('HMGET', KEYS[1], 'status', 'activate_at', 'prev_new_activate_at',\n"
    "  'prev_old_retire_at', 'app_id')\n"
    "if not rot[1] or rot[5] ~= ARGV[3] then return redis.error_reply('NOTFOUND') end\n"
    "if rot[1] ~= 'SCHEDULED' then return redis.error_reply('CANCELLED') end\n"
    "if not isint(rot[2]) or not rot[3] or not rot[4] or (rot[3] ~= '' and not isint(rot[3]))\n"
    "   or (rot[4] ~= '' and not isint(rot[4])) then return bad(KEYS[1]) end\n"
    "if redis.call('EXISTS', KEYS[2]) == 0 or redis.call('EXISTS', KEYS[3]) == 0 then\n"
    "  return bad(KEYS[1]) end\n"
    "if tonumber(ARGV[1]) >= tonumber(rot[2]) then return redis.error_reply('STARTED') end\n"
    "redis.call('HSET', KEYS[1], 'status', 'CANCELLED', 'cancelled', ARGV[1], 'cancelled_by', ARGV[2])\n"
    "redis.call('HSET', KEYS[2], 'activate_at', rot[3], 'updated', ARGV[1], 'updated_by', ARGV[2])\n"
    "bump(KEYS[2])\n"
    "redis.call('HSET', KEYS[3], 'retire_at', rot[4], 'updated', ARGV[1], 'updated_by', ARGV[2])\n"
    "bump(KEYS[3])\n"
    "local ev = {}\n"
    "for i = 5, #ARGV do ev[#ev + 1] = ARGV[i] end\n"
    "redis.call('XADD', KEYS[4], '*', unpack(ev))\n"
    "redis.call('INCR', KEYS[5])\n"
    "local t = redis.call('TIME')\n"
    "local ms = ' ' .. (t[1] * 1000 + math.floor(t[2] / 1000))\n"
    "redis.call('PUBLISH', ARGV[4], (redis.call('HGET', KEYS[2], 'fingerprint') or '') .. ms)\n"
    "redis.call('PUBLISH', ARGV[4], (redis.call('HGET', KEYS[3], 'fingerprint') or '') .. ms)\n"
    "return 'OK'\n";

/* KEYS: customer, customers, events, gen. ARGV: id, now, user, n, n field words, event. */
const char CG_LUA_CUSTOMER_CREATE[] = LUA_GUARD
    "local b = guard({{KEYS[1], 'hash'}, {KEYS[2], 'set'}, {KEYS[3], 'stream'},\n"
    "  {KEYS[4], 'int'}})\n"
    "if b then return bad(b) end\n"
    "if redis.call('HEXISTS', KEYS[1], 'version') == 1 then\n"
    "  return redis.error_reply('EXISTS') end\n"
    "local n = tonumber(ARGV[4])\n"
    "local f = {'id', ARGV[1], 'created', ARGV[2], 'created_by', ARGV[3], 'updated', ARGV[2],\n"
    "  'updated_by', ARGV[3], 'version', '1'}\n"
    "for i = 5, 4 + n do f[#f + 1] = ARGV[i] end\n"
    "redis.call('HSET', KEYS[1], unpack(f))\n"
    "redis.call('SADD', KEYS[2], ARGV[1])\n"
    "local ev = {}\n"
    "for i = 5 + n, #ARGV do ev[#ev + 1] = ARGV[i] end\n"
    "redis.call('XADD', KEYS[3], '*', unpack(ev))\n"
    "redis.call('INCR', KEYS[4])\n"
    "return 'OK'\n";

/*
 * KEYS: appinfo, apps, customer, the app's registration set, events, gen.
 * ARGV: app, customer, now, user, channel, "{p}reg:", staff ("1": may adopt
 * and see other customers' ids), n, n field words, event.
 * The app's live (PENDING, APPROVED) registrations must be the customer's;
 * those with no customer (uploaded by staff before apps had owners) are
 * given it, by staff only: a manager confined to a customer may not take
 * them, nor learn whose the others are (OTHERS).
 */
const char CG_LUA_APP_CREATE[] = LUA_GUARD
    "local b = guard({{KEYS[1], 'hash'}, {KEYS[2], 'set'}, {KEYS[3], 'hash'}, {KEYS[4], 'set'},\n"
    "  {KEYS[5], 'stream'}, {KEYS[6], 'int'}})\n"
    "if b then return bad(b) end\n"
    "if redis.call('HEXISTS', KEYS[1], 'version') == 1 then\n"
    "  return redis.error_reply('EXISTS') end\n"
    "if redis.call('HEXISTS', KEYS[3], 'version') == 0 then\n"
    "  return redis.error_reply('NOCUSTOMER') end\n"
    "local regs, other, adopt = {}, {}, {}\n"
    "for _, id in ipairs(redis.call('SMEMBERS', KEYS[4])) do\n"
    "  local k = ARGV[6] .. id\n"
    "  local t = redis.call('TYPE', k)\n"
    "  if type(t) == 'table' then t = t.ok end\n"
    "  if t ~= 'none' then\n"
    "    if t ~= 'hash' or not intf(k, 'version') then return bad(k) end\n"
    "    local c = redis.call('HMGET', k, 'customer_id', 'fingerprint', 'status')\n"
    "    regs[#regs + 1] = c[2] or ''\n"
    "    if not c[1] or c[1] == '' then adopt[#adopt + 1] = k\n"
    "    elseif c[1] ~= ARGV[2] and (c[3] == 'PENDING' or c[3] == 'APPROVED') and\n"
    "           #other < 20 then other[#other + 1] = id end\n"
    "  end\n"
    "end\n"
    "if ARGV[7] ~= '1' and (#other > 0 or #adopt > 0) then\n"
    "  return redis.error_reply('OTHERS') end\n"
    "if #other > 0 then return redis.error_reply('CONFLICT ' .. table.concat(other, ',')) end\n"
    "local n = tonumber(ARGV[8])\n"
    "local f = {'id', ARGV[1], 'customer_id', ARGV[2], 'created', ARGV[3], 'created_by', ARGV[4],\n"
    "  'updated', ARGV[3], 'updated_by', ARGV[4], 'version', '1'}\n"
    "for i = 9, 8 + n do f[#f + 1] = ARGV[i] end\n"
    "redis.call('HSET', KEYS[1], unpack(f))\n"
    "redis.call('SADD', KEYS[2], ARGV[1])\n"
    "for _, k in ipairs(adopt) do\n"
    "  redis.call('HSET', k, 'customer_id', ARGV[2], 'updated', ARGV[3], 'updated_by', ARGV[4])\n"
    "  bump(k)\n"
    "end\n"
    "local ev = {}\n"
    "for i = 9 + n, #ARGV do ev[#ev + 1] = ARGV[i] end\n"
    "redis.call('XADD', KEYS[5], '*', unpack(ev))\n"
    "redis.call('INCR', KEYS[6])\n"
    "local t = redis.call('TIME')\n"
    "local ms = ' ' .. (t[1] * 1000 + math.floor(t[2] / 1000))\n"
    "for _, fp in ipairs(regs) do redis.call('PUBLISH', ARGV[5], fp .. ms) end\n"
    "return #adopt\n";

/* KEYS: record, events, gen. ARGV: If-Match condition, now, user, n, n field words, event. */
const char CG_LUA_ENTITY_UPDATE[] = LUA_GUARD
    "local b = guard({{KEYS[1], 'hash'}, {KEYS[2], 'stream'}, {KEYS[3], 'int'}})\n"
    "if b then return bad(b) end\n"
    "if not intf(KEYS[1], 'version') then return bad(KEYS[1]) end\n"
    "local ver = redis.call('HGET', KEYS[1], 'version')\n"
    "if not ver then return redis.error_reply('NOTFOUND') end\n"
    "if not ifmatch(ARGV[1], ver) then return redis.error_reply('PRECONDITION') end\n"
    "local v = tonumber(ver) + 1\n"
    "local n = tonumber(ARGV[4])\n"
    "local f = {'updated', ARGV[2], 'updated_by', ARGV[3], 'version', v}\n"
    "for i = 5, 4 + n do f[#f + 1] = ARGV[i] end\n"
    "redis.call('HSET', KEYS[1], unpack(f))\n"
    "local ev = {}\n"
    "for i = 5 + n, #ARGV do ev[#ev + 1] = ARGV[i] end\n"
    "redis.call('XADD', KEYS[2], '*', unpack(ev))\n"
    "redis.call('INCR', KEYS[3])\n"
    "return v\n";

/* KEYS: expiry marker, events. ARGV: threshold, now, lower thresholds (list), event. */
const char CG_LUA_EXPIRY[] = LUA_GUARD
    "local b = guard({{KEYS[1], 'hash'}, {KEYS[2], 'stream'}})\n"
    "if b then return bad(b) end\n"
    "if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) == 0 then return 0 end\n"
    "for s in string.gmatch(ARGV[3], '[^,]+') do redis.call('HSETNX', KEYS[1], s, ARGV[2]) end\n"
    "local ev = {}\n"
    "for i = 4, #ARGV do ev[#ev + 1] = ARGV[i] end\n"
    "redis.call('XADD', KEYS[2], '*', unpack(ev))\n"
    "return 1\n";

/* ------------------------------------------------------------ running and loading */

static void failf(cg_registry_fail_t *f, int status, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static void failf(cg_registry_fail_t *f, int status, const char *code, const char *fmt, ...)
{
    va_list ap;
    f->status = status;
    f->code = code;
    va_start(ap, fmt);
    vsnprintf(f->message, sizeof(f->message), fmt, ap);
    va_end(ap);
}

void cg_registry_fail_store(cg_registry_fail_t *f, cg_store_rc_t rc, const char *err)
{
    if (rc == CG_STORE_PERM)
        failf(f, 500, "Store.PermissionDenied", "the store refused a command by ACL: %s", err);
    else if (rc == CG_STORE_CORRUPT)
        failf(f, 500, "Store.Corrupt", "the store holds damaged data: %s", err);
    else
        failf(f, 503, "Store.Unavailable", "the registration store did not answer: %s", err);
}

cg_store_rc_t cg_registry_outcome(cg_store_rc_t rc, redisReply **r, const char *what, char *err,
                                  size_t errlen)
{
    if (rc == CG_STORE_OK && (*r)->type == REDIS_REPLY_ERROR) {
        snprintf(err, errlen, "%s: %.150s", what, (*r)->str);
        rc = cg_store_reply_kind(*r);
        cg_store_reply_free(*r);
        *r = NULL;
    }
    return rc;
}

/* EVAL script with its keys and args; with durable, WAIT after it (cg_store_cmd_durable). */
static cg_store_rc_t eval_run(cg_store_t *st, int timeout_ms, const char *script, int nkeys,
                              const char **keys, int nargs, const char **args, redisReply **out,
                              int durable, int *acked, int *wanted, char *err, size_t errlen)
{
    int argc = 3 + nkeys + nargs;
    const char **argv = calloc((size_t)argc, sizeof(*argv));
    size_t *lens = calloc((size_t)argc, sizeof(*lens));
    char nk[16];
    cg_store_rc_t rc = CG_STORE_ERROR;
    if (argv == NULL || lens == NULL) {
        snprintf(err, errlen, "out of memory");
        goto done;
    }
    snprintf(nk, sizeof(nk), "%d", nkeys);
    argv[0] = "EVAL";
    argv[1] = script;
    argv[2] = nk;
    for (int i = 0; i < nkeys; i++)
        argv[3 + i] = keys[i];
    for (int i = 0; i < nargs; i++)
        argv[3 + nkeys + i] = args[i];
    for (int i = 0; i < argc; i++)
        lens[i] = strlen(argv[i]);
    rc = durable ? cg_store_cmd_durable(st, timeout_ms, argc, argv, lens, out, acked, wanted,
                                        err, errlen)
                 : cg_store_cmd(st, timeout_ms, argc, argv, lens, out, err, errlen);
done:
    free(argv);
    free(lens);
    return rc;
}

cg_store_rc_t cg_registry_eval(cg_store_t *st, int timeout_ms, const char *script, int nkeys,
                               const char **keys, int nargs, const char **args,
                               redisReply **out, char *err, size_t errlen)
{
    return eval_run(st, timeout_ms, script, nkeys, keys, nargs, args, out, 0, NULL, NULL,
                    err, errlen);
}

/* cg_registry_eval with WAIT after it, as the store is configured (cg_store_cmd_durable). */
static cg_store_rc_t registry_eval_durable(cg_store_t *st, int timeout_ms, const char *script,
                                           int nkeys, const char **keys, int nargs,
                                           const char **args, redisReply **out, int *acked,
                                           int *wanted, char *err, size_t errlen)
{
    return eval_run(st, timeout_ms, script, nkeys, keys, nargs, args, out, 1, acked, wanted,
                    err, errlen);
}

cg_store_rc_t cg_registry_cmd2(cg_store_t *st, int timeout_ms, const char *c, const char *key,
                               redisReply **out, char *err, size_t errlen)
{
    const char *argv[2] = { c, key };
    size_t lens[2] = { strlen(c), strlen(key) };
    return cg_store_cmd(st, timeout_ms, 2, argv, lens, out, err, errlen);
}

json_t *cg_registry_hash_obj(const redisReply *r)
{
    if (r == NULL || r->type != REDIS_REPLY_ARRAY || r->elements % 2 != 0)
        return NULL;
    json_t *o = json_object();
    for (size_t i = 0; o != NULL && i + 1 < r->elements; i += 2) {
        const redisReply *k = r->element[i], *v = r->element[i + 1];
        if (k->type != REDIS_REPLY_STRING || v->type != REDIS_REPLY_STRING ||
            json_object_set_new(o, k->str, json_stringn(v->str, v->len)) != 0) {
            json_decref(o);
            return NULL;
        }
    }
    return o;
}

int cg_registry_load_hash(cg_store_t *st, int timeout_ms, const char *key, json_t **obj,
                          cg_registry_fail_t *f)
{
    char err[200];
    redisReply *r = NULL;
    *obj = NULL;
    cg_store_rc_t rc = cg_registry_cmd2(st, timeout_ms, "HGETALL", key, &r, err, sizeof(err));
    if (rc != CG_STORE_OK) {
        cg_registry_fail_store(f, rc, err);
        return -1;
    }
    if (r->type == REDIS_REPLY_ERROR || (r->type == REDIS_REPLY_ARRAY && r->elements == 0)) {
        rc = cg_store_reply_kind(r);
        if (rc != CG_STORE_OK)
            snprintf(err, sizeof(err), "HGETALL: %.150s", r->str);
        cg_store_reply_free(r);
        if (rc == CG_STORE_CORRUPT) {
            failf(f, 500, "Store.Corrupt", "the store key %.200s is damaged", key);
            return -1;
        } else if (rc != CG_STORE_OK) {
            cg_registry_fail_store(f, rc, err);
            return -1;
        }
        return 1;
    }
    *obj = cg_registry_hash_obj(r);
    cg_store_reply_free(r);
    if (*obj == NULL) {
        failf(f, 500, "Store.Corrupt", "the store key %.200s is damaged", key);
        return -1;
    }
    return 0;
}

int cg_registry_run(cg_store_t *st, int timeout_ms, const char *script, int nkeys,
                    const char **keys, int nargs, const char **args,
                    const cg_script_error_t *errors, cg_registry_fail_t *f)
{
    return cg_registry_run_reply(st, timeout_ms, script, nkeys, keys, nargs, args, errors, f,
                                 NULL, 0);
}

int cg_registry_run_reply(cg_store_t *st, int timeout_ms, const char *script, int nkeys,
                          const char **keys, int nargs, const char **args,
                          const cg_script_error_t *errors, cg_registry_fail_t *f, char *ok,
                          size_t okcap)
{
    char err[200];
    redisReply *r = NULL;
    int acked = -1, wanted = 0;
    if (registry_eval_durable(st, timeout_ms, script, nkeys, keys, nargs, args, &r, &acked,
                              &wanted, err, sizeof(err)) != CG_STORE_OK) {
        cg_registry_fail_store(f, CG_STORE_ERROR, err);
        return -1;
    }
    if (r->type != REDIS_REPLY_ERROR && acked >= 0 && acked < wanted) {
        /* Applied on the master, not known to be on enough replicas: a failover
         * now could lose it. Never reported done (a lost inactivation would let
         * a revoked certificate in again). */
        failf(f, 503, "Store.NotDurable", "the change was written to the Redis master but only "
              "%d of %d replicas acknowledged it in time; it may be lost if the master fails "
              "now. Retrying is safe: a retry answers 409 with the current state if the change "
              "was kept", acked, wanted);
        cg_store_reply_free(r);
        return -1;
    }
    if (r->type != REDIS_REPLY_ERROR) {
        if (ok != NULL && okcap > 0)
            snprintf(ok, okcap, "%.*s", r->type == REDIS_REPLY_STRING ||
                     r->type == REDIS_REPLY_STATUS ? (int)r->len : 0, r->str ? r->str : "");
        cg_store_reply_free(r);
        return 0;
    }
    /* Redis prefixes "ERR " to a one-word error; "WORD detail" keeps its word. */
    const char *text = strncmp(r->str, "ERR ", 4) == 0 ? r->str + 4 : r->str;
    if (strncmp(text, "BADKEY ", 7) == 0) {
        failf(f, 500, "Store.Corrupt", "the store key %.200s has the wrong type or format; "
              "nothing was written", text + 7);
        cg_store_reply_free(r);
        return -1;
    }
    const cg_script_error_t *e = errors;
    size_t wl = 0;
    while (e->word != NULL) {
        wl = strlen(e->word);
        if (strncmp(text, e->word, wl) == 0 && (text[wl] == '\0' || text[wl] == ' '))
            break;
        e++;
    }
    if (e->word == NULL) {
        char why[240];
        snprintf(why, sizeof(why), "the write was refused: %.200s", r->str);
        cg_store_rc_t kind = cg_store_reply_kind(r);
        /* Our own refusals are mapped above; any other is Redis's, by kind. */
        cg_registry_fail_store(f, kind == CG_STORE_OK ? CG_STORE_ERROR : kind, why);
    } else {
        char msg[300];
        const char *rest = text[wl] == ' ' ? text + wl + 1 : "in that state";
        /* The messages are our own constants with at most one %s. */
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wformat-nonliteral"
        snprintf(msg, sizeof(msg), e->message, rest);
#pragma GCC diagnostic pop
        if (acked >= 0 && acked < wanted)
            /* Our refusal (a retry's 409) reports the state an earlier write left on
             * the master: not as settled while no replica is known to have it. */
            failf(f, 503, "Store.NotDurable", "the current state is on the Redis master but "
                  "only %d of %d replicas acknowledged it in time; it may be lost if the master "
                  "fails now. Retry later", acked, wanted);
        else
            failf(f, e->status, e->code, "%s", msg);
    }
    cg_store_reply_free(r);
    return -1;
}

json_t *cg_registry_load_records(cg_store_t *st, int timeout_ms, const char *setkey,
                                 const char *const *names, int nnames, int *why, char *err,
                                 size_t errlen)
{
    redisReply *r = NULL;
    cg_store_rc_t rc = cg_registry_cmd2(st, timeout_ms, "SMEMBERS", setkey, &r, err, errlen);
    *why = (int)rc;
    if (rc != CG_STORE_OK)
        return NULL;
    if (r->type != REDIS_REPLY_ARRAY) {
        /* An error reply says what it is (NOPERM is not damage). */
        *why = r->type == REDIS_REPLY_ERROR ? (int)cg_store_reply_kind(r) : CG_STORE_CORRUPT;
        if (*why == CG_STORE_CORRUPT)
            snprintf(err, errlen, "an index set is damaged");
        else
            snprintf(err, errlen, "SMEMBERS: %.150s", r->str);
        cg_store_reply_free(r);
        return NULL;
    }
    size_t n = r->elements ? r->elements : 1, nk = 0;
    int argc = 2 + (names ? nnames : 0);
    /* "{prefix}reg:{id}", sized to fit: 10^5 keys of KEY_MAX would be 50 MB. */
    char (*keys)[CG_PREFIX_MAX + CG_ID_MAX + 8] = malloc(n * sizeof(*keys));
    const char **argv = malloc(n * (size_t)argc * sizeof(char *));
    size_t *lens = malloc(n * (size_t)argc * sizeof(size_t));
    int *argcs = malloc(n * sizeof(int));
    const char *const **argvs = malloc(n * sizeof(*argvs));
    const size_t **lensv = malloc(n * sizeof(*lensv));
    redisReply **out = calloc(n, sizeof(redisReply *));
    json_t *recs = json_array();
    if (!keys || !argv || !lens || !argcs || !argvs || !lensv || !out || !recs) {
        *why = CG_REGISTRY_NOMEM;
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    for (size_t i = 0; i < r->elements; i++) {
        redisReply *e = r->element[i];
        if (e->type != REDIS_REPLY_STRING || !cg_id_valid(e->str, e->len))
            continue;
        snprintf(keys[nk], sizeof(keys[nk]), "%s" CG_K_REG "%.*s", cg_store_prefix(st), (int)e->len,
                 e->str);
        const char **a = &argv[nk * (size_t)argc];
        a[0] = names ? "HMGET" : "HGETALL";
        a[1] = keys[nk];
        for (int f = 2; f < argc; f++)
            a[f] = names[f - 2];
        for (int f = 0; f < argc; f++)
            lens[nk * (size_t)argc + (size_t)f] = strlen(a[f]);
        argcs[nk] = argc;
        argvs[nk] = a;
        lensv[nk] = &lens[nk * (size_t)argc];
        nk++;
    }
    if (nk > 0 && (rc = cg_store_pipeline(st, timeout_ms, nk, argcs, argvs, lensv, out, err,
                                          errlen)) != CG_STORE_OK) {
        *why = (int)rc;
        goto fail;
    }
    for (size_t i = 0; i < nk; i++) {
        /* An error reply is a failure of the whole read, not a record that is gone. */
        if ((rc = cg_store_reply_kind(out[i])) != CG_STORE_OK) {
            *why = (int)rc;
            snprintf(err, errlen, "%s: %.150s", names ? "HMGET" : "HGETALL", out[i]->str);
            for (size_t j = i; j < nk; j++)
                cg_store_reply_free(out[j]);
            goto fail;
        }
        redisReply *h = out[i];
        json_t *o = NULL;
        if (names == NULL) {
            o = h->type == REDIS_REPLY_ARRAY && h->elements ? cg_registry_hash_obj(h) : NULL;
        } else if (h->type == REDIS_REPLY_ARRAY && h->elements == (size_t)nnames) {
            o = json_object();
            for (int f = 0; o != NULL && f < nnames; f++)
                if (h->element[f]->type == REDIS_REPLY_STRING)
                    json_object_set_new(o, names[f], json_stringn(h->element[f]->str,
                                                                  h->element[f]->len));
            if (o != NULL && json_object_size(o) == 0) {   /* every field nil: gone */
                json_decref(o);
                o = NULL;
            }
        }
        if (o != NULL)
            json_array_append_new(recs, o);
        cg_store_reply_free(h);
    }
    goto done;
fail:
    json_decref(recs);
    recs = NULL;
done:
    cg_store_reply_free(r);
    free(keys); free(argv); free(lens); free(argcs); free(argvs); free(lensv); free(out);
    return recs;
}

json_t *cg_registry_load_set(cg_store_t *st, int timeout_ms, const char *setkey,
                             cg_registry_fail_t *f)
{
    char err[200];
    int why;
    json_t *recs = cg_registry_load_records(st, timeout_ms, setkey, NULL, 0, &why, err,
                                            sizeof(err));
    if (recs == NULL && why == CG_REGISTRY_NOMEM)
        failf(f, 500, "Internal", "out of memory");
    else if (recs == NULL)
        cg_registry_fail_store(f, (cg_store_rc_t)why, err);
    return recs;
}
