-- Give every app an owner from the registrations it already has, before the
-- gateways are upgraded to a version that refuses apps without one
-- (docs/admin-api.md, "Migrating registrations from before apps had owners").
--
--   redis-cli --eval scripts/migrate-app-owners.lua , certgate:          # report only
--   redis-cli --eval scripts/migrate-app-owners.lua , certgate: apply    # write
--
-- ARGV[1]: the key prefix (CertGateKeyPrefix). ARGV[2]: "apply" to write.
-- An app whose live (PENDING, APPROVED) registrations name exactly one
-- customer gets that customer as owner; its registrations without a customer
-- get it too. Apps with two customers, or none, are reported and left to a
-- manager (POST /apps). Running it again changes nothing.
local p = ARGV[1]
local apply = ARGV[2] == 'apply'
if p == nil then return redis.error_reply('usage: --eval migrate-app-owners.lua , <prefix> [apply]') end

local function kind(k)
  local t = redis.call('TYPE', k)
  if type(t) == 'table' then t = t.ok end
  return t
end

-- app -> {customers = {c = true}, regs = {key, ...}, fps = {...}}
local apps, order = {}, {}
for _, id in ipairs(redis.call('SMEMBERS', p .. 'regs')) do
  local k = p .. 'reg:' .. id
  if kind(k) == 'hash' then
    local f = redis.call('HMGET', k, 'app_id', 'customer_id', 'status', 'fingerprint')
    if f[1] then
      local a = apps[f[1]]
      if not a then
        a = {customers = {}, regs = {}, fps = {}}
        apps[f[1]] = a
        order[#order + 1] = f[1]
      end
      if f[2] and f[2] ~= '' and (f[3] == 'PENDING' or f[3] == 'APPROVED') then
        a.customers[f[2]] = true
      end
      a.regs[#a.regs + 1] = {k, f[2] or ''}
      a.fps[#a.fps + 1] = f[4] or ''
    end
  end
end
table.sort(order)

local t = redis.call('TIME')
local now = tostring(t[1])
-- ISO 8601 UTC by hand: Redis's Lua has no os.date.
local function iso8601(secs)
  local days, rem = math.floor(secs / 86400), secs % 86400
  local z = days + 719468
  local era = math.floor(z / 146097)
  local doe = z - era * 146097
  local yoe = math.floor((doe - math.floor(doe / 1460) + math.floor(doe / 36524) -
                          math.floor(doe / 146096)) / 365)
  local doy = doe - (365 * yoe + math.floor(yoe / 4) - math.floor(yoe / 100))
  local mp = math.floor((5 * doy + 2) / 153)
  local d = doy - math.floor((153 * mp + 2) / 5) + 1
  local m = mp < 10 and mp + 3 or mp - 9
  local y = yoe + era * 400 + (m <= 2 and 1 or 0)
  return string.format('%04d-%02d-%02dT%02d:%02d:%02dZ', y, m, d, math.floor(rem / 3600),
                       math.floor(rem % 3600 / 60), rem % 60)
end
local iso = iso8601(tonumber(t[1]))
local function isint(v) return v ~= nil and string.match(v, '^%-?%d+$') ~= nil and #v < 18 end

-- Redis does not roll a script back: with apply, check every key that will be
-- written (type, counters, versions) before the first write.
local function owner_of(app)
  local cs = {}
  for c in pairs(apps[app].customers) do cs[#cs + 1] = c end
  table.sort(cs)
  return cs
end
if apply then
  local want = {{p .. 'customers', 'set'}, {p .. 'apps', 'set'}, {p .. 'events', 'stream'},
                {p .. 'gen', 'string'}}
  for _, app in ipairs(order) do
    local cs = owner_of(app)
    want[#want + 1] = {p .. 'appinfo:' .. app, 'hash'}
    if #cs == 1 then want[#want + 1] = {p .. 'customer:' .. cs[1], 'hash'} end
  end
  for _, w in ipairs(want) do
    local t = kind(w[1])
    if t ~= 'none' and t ~= w[2] then return redis.error_reply('BADKEY ' .. w[1]) end
  end
  if kind(p .. 'gen') == 'string' and not isint(redis.call('GET', p .. 'gen')) then
    return redis.error_reply('BADKEY ' .. p .. 'gen')
  end
  for _, app in ipairs(order) do
    for _, r in ipairs(apps[app].regs) do
      local v = redis.call('HGET', r[1], 'version')
      if v and not isint(v) then return redis.error_reply('BADKEY ' .. r[1]) end
    end
  end
end

local out, wrote = {}, false
for _, app in ipairs(order) do
  local a = apps[app]
  local cs = owner_of(app)
  if redis.call('HEXISTS', p .. 'appinfo:' .. app, 'version') == 1 then
    out[#out + 1] = app .. ': registered already'
  elseif #cs > 1 then
    out[#out + 1] = app .. ': conflict ' .. table.concat(cs, ',') ..
      ' (decline or inactivate the wrong ones, then POST /apps)'
  elseif #cs == 0 then
    out[#out + 1] = app .. ': no customer (a manager registers it with POST /apps)'
  else
    local c = cs[1]
    out[#out + 1] = app .. ': owner ' .. c
    if apply then
      local ck = p .. 'customer:' .. c
      if redis.call('HEXISTS', ck, 'version') == 0 then
        redis.call('HSET', ck, 'id', c, 'created', now, 'created_by', 'migration',
                   'updated', now, 'updated_by', 'migration', 'version', '1')
        redis.call('SADD', p .. 'customers', c)
        redis.call('XADD', p .. 'events', '*', 'time', iso, 'user', 'migration', 'ip', '',
                   'action', 'customer.create', 'customer_id', c)
      end
      redis.call('HSET', p .. 'appinfo:' .. app, 'id', app, 'customer_id', c, 'created', now,
                 'created_by', 'migration', 'updated', now, 'updated_by', 'migration',
                 'version', '1')
      redis.call('SADD', p .. 'apps', app)
      for _, r in ipairs(a.regs) do
        if r[2] == '' then
          redis.call('HSET', r[1], 'customer_id', c, 'updated', now, 'updated_by', 'migration')
          redis.call('HSET', r[1], 'version',
                     tonumber(redis.call('HGET', r[1], 'version') or '1') + 1)
        end
      end
      redis.call('XADD', p .. 'events', '*', 'time', iso, 'user', 'migration', 'ip', '',
                 'action', 'app.create', 'app_id', app, 'customer_id', c)
      local ms = ' ' .. (t[1] * 1000 + math.floor(t[2] / 1000))
      for _, fp in ipairs(a.fps) do redis.call('PUBLISH', p .. 'invalidate', fp .. ms) end
      wrote = true
    end
  end
end
if wrote then redis.call('INCR', p .. 'gen') end
if not apply then out[#out + 1] = '(report only: add "apply" to write)' end
return out
