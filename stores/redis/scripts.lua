--[[
mini-ipam's Redis store: every operation of stores/redis.py is ONE call of this script.

Redis runs a script atomically, and every operation below checks everything it
needs before its first write, so an operation either happens entirely or not at
all: a refused or failed call never leaves a half-claimed block behind.

The address maps are the sparse buddy tree of stores/tree.py, kept in Redis
hashes. A node is named by a *bit string*: the leading bits of its block ("" is
the root, the children of s are s.."0" and s.."1"), so IPv6's 128-bit
arithmetic never needs Lua numbers. A node's value is "c" when the block itself
is claimed, else the length of the largest free block below it (depth + 1 when
nothing is free). Absent nodes are entirely free. Every operation costs a number
of Redis commands bounded by the prefix lengths, never by how many blocks or
addresses are claimed.

Calling convention (EVALSHA sha 1 KEYS[1] ARGV...)
  KEYS[1]  "{<prefix>}:settings". Declared so that a cluster client routes the
           call to the node serving the map's hash slot; every other key shares
           the "{<prefix>}" hash tag, so it lives in the same slot.
  ARGV[1]  the operation: one of the names of `ops` below
  ARGV[2]  the key prefix "{<prefix>}:"; every key name is built from it
  ARGV[3]  deadline: the server time (Unix microseconds) after which the caller
           no longer waits for the reply, or "0" for none. A call that reaches
           the server later (say, a paused server resumed) changes nothing and
           replies {now, "expired"}, so a caller's timeout means "nothing changed".
  ARGV[4]  request id: a random name the caller gives every call that changes the
           map (open_exact, open_any, close, claim, claim_next, release), or "" for
           none. See "Abandoned requests" below.
  ARGV[5…] the operation's arguments, listed above each operation

Every reply is an array: the server time (Unix microseconds, as a string), then
a status word, then the operation's values. The time lets the caller track the
offset between its clock and the server's, from which it computes deadlines.

Common arguments
  family   "4" or "6"
  bits     a block's bit string (its network's leading prefixlen bits)
  rel      an address's bits below its pool's block (length = width - #bits)
  scope    a pool's scope (any string)

Keys (P = ARGV[2]; <cidr> is the block's canonical text, as Python 3.11's
ipaddress writes it)
  P.."settings"                hash   name -> value
  P.."tree:"..family           hash   the family's block tree
  P.."slot:"..<cidr>           string JSON {"owner","label","since"} of a claimed block
  P.."pools:"..<cidr>          hash   scope -> JSON {"owner","since","cursor"}
  P.."addrs:"..<cidr>..":"..scope   hash   address text -> JSON {"since"}
  P.."atree:"..<cidr>..":"..scope   hash   the pool's address tree (rel bit strings),
                                           plus "cursor" = rel bits of the last serial claim
  P.."req:"..id                string "abandoned", or JSON: how to undo the request's change;
                                      EX 3600 (see "Abandoned requests")

State that breaks the invariants is reported as an error reply starting with
"CORRUPT", always before anything was written.

Abandoned requests
  A deadline cannot cover a call that ran in time but whose reply was delayed
  (the server stalled right after it) or lost (the server died before writing
  it): the caller's timeout would then hide a change. So a call with a request
  id that changes the map also writes, in the same atomic step,
      P.."req:"..id   string  JSON: how to undo it, EX 3600
  ({"undo":"close",family,bits,scope,pool} for a pool it opened,
   {"undo":"release",family,bits,scope,rel,address} for an address it claimed).
  A caller that timed out later runs "abandon" with the id: it undoes the change
  if it landed and the claim is still the one it made, and in every case leaves
  P.."req:"..id = "abandoned" (EX 3600). A call that finds its id already
  abandoned (the abandon overtook it) changes nothing and replies
  {now, "expired"}, like a late one. Releases (close, release) record no undo
  but honour the marker too.
--]]

local CLAIMED = 'c'
local WIDTH = { ['4'] = 32, ['6'] = 128 }

-- Error reply for broken invariants. Only ever returned before the first write.
local function corrupt(message)
  return redis.error_reply('CORRUPT ' .. message)
end

-- ---------------------------------------------------------------------------
-- Bit strings and their canonical text
-- ---------------------------------------------------------------------------

-- The next bit string of the same length, or nil when `bits` is all ones.
local function increment(bits)
  local i = #bits
  while i > 0 and string.sub(bits, i, i) == '1' do
    i = i - 1
  end
  if i == 0 then
    return nil
  end
  return string.sub(bits, 1, i - 1) .. '1' .. string.rep('0', #bits - i)
end

-- IPv6 text as RFC 5952 (and Python's ipaddress) writes it: lowercase hex
-- groups without leading zeros, and the longest run of two or more zero groups
-- (the first such run on ties) replaced by "::".
local function ipv6_text(bits)
  local groups = {}
  for i = 0, 7 do
    groups[i + 1] = string.format('%x', tonumber(string.sub(bits, 16 * i + 1, 16 * i + 16), 2))
  end
  local best_start, best_len, run_start, run_len = 0, 0, 0, 0
  for i = 1, 8 do
    if groups[i] == '0' then
      if run_len == 0 then
        run_start = i
      end
      run_len = run_len + 1
      if run_len > best_len then
        best_start, best_len = run_start, run_len
      end
    else
      run_len = 0
    end
  end
  if best_len < 2 then
    return table.concat(groups, ':')
  end
  return table.concat(groups, ':', 1, best_start - 1) .. '::' .. table.concat(groups, ':', best_start + best_len, 8)
end

-- The text of a full-width address (32 or 128 bits).
local function address_text(family, bits)
  if family == '6' then
    return ipv6_text(bits)
  end
  local octets = {}
  for i = 0, 3 do
    octets[i + 1] = string.format('%d', tonumber(string.sub(bits, 8 * i + 1, 8 * i + 8), 2))
  end
  return table.concat(octets, '.')
end

-- The CIDR text of a block: "10.1.2.0/28", "fd00::/64".
local function cidr_text(family, bits)
  local padded = bits .. string.rep('0', WIDTH[family] - #bits)
  return address_text(family, padded) .. '/' .. #bits
end

-- ---------------------------------------------------------------------------
-- The sparse buddy tree (the algorithm of stores/tree.py)
-- ---------------------------------------------------------------------------

-- Length of the largest free block at or below `node`, given its stored value.
local function free_len(value, node, depth)
  if not value then
    return #node
  end
  if value == CLAIMED then
    return depth + 1
  end
  return tonumber(value)
end

-- The claimed node strictly above `node`, if any (one HMGET for all ancestors).
local function claimed_ancestor(tree, node)
  if #node == 0 then
    return nil
  end
  local fields = {}
  for len = 0, #node - 1 do
    fields[len + 1] = string.sub(node, 1, len)
  end
  local values = redis.call('HMGET', tree, unpack(fields))
  for i = 1, #fields do
    if values[i] == CLAIMED then
      return fields[i]
    end
  end
  return nil
end

-- A claimed node overlapping `node`: an ancestor, the node itself or a descendant.
local function holder(tree, node)
  local above = claimed_ancestor(tree, node)
  if above then
    return above
  end
  local value = redis.call('HGET', tree, node)
  while value do
    if value == CLAIMED then
      return node
    end
    -- A stored, unclaimed node has something claimed below it: follow a stored child.
    local left = node .. '0'
    local left_value = redis.call('HGET', tree, left)
    if left_value then
      node, value = left, left_value
    else
      node = node .. '1'
      value = redis.call('HGET', tree, node)
    end
  end
  return nil
end

-- Recompute the ancestors of a node that was just claimed or released. Buddies
-- that are both free merge (their parent's record is deleted); the walk stops
-- at the first ancestor whose value does not change.
local function update_ancestors(tree, node, depth)
  for len = #node - 1, 0, -1 do
    local parent = string.sub(node, 1, len)
    local left, right = parent .. '0', parent .. '1'
    local values = redis.call('HMGET', tree, parent, left, right)
    local old, left_value, right_value = values[1], values[2], values[3]
    local new = false
    if left_value or right_value then
      new = tostring(math.min(free_len(left_value, left, depth), free_len(right_value, right, depth)))
    end
    if new == old then
      return
    end
    if new then
      redis.call('HSET', tree, parent, new)
    else
      redis.call('HDEL', tree, parent)
    end
  end
end

-- Mark `node` claimed. The caller has checked that nothing overlaps it.
local function set_claimed(tree, node, depth)
  redis.call('HSET', tree, node, CLAIMED)
  update_ancestors(tree, node, depth)
end

-- Free a claimed `node`. The caller has checked that it is claimed.
local function set_free(tree, node, depth)
  redis.call('HDEL', tree, node)
  update_ancestors(tree, node, depth)
end

-- The lowest free aligned block of length `want` below `node`, at or after
-- `start` (a depth-long bit string, or nil for no lower bound).
local function first_free(tree, node, want, start, depth)
  local start_here = start and string.sub(start, 1, #node)
  if start_here and node < start_here then
    return nil -- the whole block lies before start
  end
  local value = redis.call('HGET', tree, node)
  if not value then
    -- Entirely free: its first aligned block, or the first one not before start.
    if not start_here or node > start_here then
      return node .. string.rep('0', want - #node)
    end
    local candidate = string.sub(start, 1, want)
    if string.find(start, '1', want + 1, true) then
      candidate = increment(candidate)
      if not candidate or string.sub(candidate, 1, #node) ~= node then
        return nil
      end
    end
    return candidate
  end
  if value == CLAIMED or tonumber(value) > want then
    return nil
  end
  return first_free(tree, node .. '0', want, start, depth) or first_free(tree, node .. '1', want, start, depth)
end

-- The lowest free aligned block of length `want` inside `within`, or nil.
local function find_first(tree, within, want, start, depth)
  if want < #within or want > depth or claimed_ancestor(tree, within) then
    return nil
  end
  return first_free(tree, within, want, start, depth)
end

-- ---------------------------------------------------------------------------
-- Blocks and pools
-- ---------------------------------------------------------------------------

-- The key names of a pool.
local function pool_keys(P, family, bits, scope)
  local cidr = cidr_text(family, bits)
  return P .. 'pools:' .. cidr, P .. 'addrs:' .. cidr .. ':' .. scope, P .. 'atree:' .. cidr .. ':' .. scope, cidr
end

-- Claim a free block and open its first pool. SET NX comes first: a slot key
-- left behind for a block the tree calls free is refused before any write.
local function claim_block(P, family, bits, scope, block_json, pool_json)
  local pools, _, _, cidr = pool_keys(P, family, bits, scope)
  if not redis.call('SET', P .. 'slot:' .. cidr, block_json, 'NX') then
    return corrupt('block ' .. cidr .. ' is free in the tree but has a slot key')
  end
  set_claimed(P .. 'tree:' .. family, bits, WIDTH[family])
  redis.call('HSET', pools, scope, pool_json)
  return { 'granted', family, bits, block_json, pool_json, 1 }
end

local ops = {}

-- Arguments: family, bits, scope, block_json, pool_json, share ("1"|"0"), share_label
-- Reply after the time: {"granted", family, bits, block_json, pool_json, created (1|0)}
--      | {"overlap", family, holder_bits, holder_block_json}
function ops.open_exact(P, a)
  local family, bits, scope, block_json, pool_json, share, share_label =
    a[1], a[2], a[3], a[4], a[5], a[6], a[7]
  local found = holder(P .. 'tree:' .. family, bits)
  if not found then
    return claim_block(P, family, bits, scope, block_json, pool_json)
  end
  local held_cidr = cidr_text(family, found)
  local held = redis.call('GET', P .. 'slot:' .. held_cidr)
  if not held then
    return corrupt('block ' .. held_cidr .. ' is claimed in the tree but has no slot key')
  end
  if share == '1' and found == bits and cjson.decode(held).label == share_label then
    local pools = pool_keys(P, family, bits, scope)
    local existing = redis.call('HGET', pools, scope)
    if existing then
      return { 'granted', family, bits, held, existing, 0 }
    end
    redis.call('HSET', pools, scope, pool_json)
    return { 'granted', family, bits, held, pool_json, 1 }
  end
  return { 'overlap', family, found, held }
end

-- Arguments: scope, block_json, pool_json, want, then (family, parent bits) pairs
-- Reply after the time: as open_exact's "granted" | {"exhausted"}
function ops.open_any(P, a)
  local scope, block_json, pool_json, want = a[1], a[2], a[3], tonumber(a[4])
  for i = 5, #a - 1, 2 do
    local family, parent = a[i], a[i + 1]
    local found = find_first(P .. 'tree:' .. family, parent, want, nil, WIDTH[family])
    if found then
      return claim_block(P, family, found, scope, block_json, pool_json)
    end
  end
  return { 'exhausted' }
end

-- Arguments: family, bits, scope
-- Reply after the time: {"closed", pool_json, block_json, freed (1|0)} | {"absent"}
function ops.close(P, a)
  local family, bits, scope = a[1], a[2], a[3]
  local pools, addrs, atree, cidr = pool_keys(P, family, bits, scope)
  local pool = redis.call('HGET', pools, scope)
  if not pool then
    return { 'absent' }
  end
  local slot = P .. 'slot:' .. cidr
  local block = redis.call('GET', slot)
  if not block then
    return corrupt('pool ' .. cidr .. ' has no slot key')
  end
  local tree = P .. 'tree:' .. family
  local last = redis.call('HLEN', pools) == 1
  if last and redis.call('HGET', tree, bits) ~= CLAIMED then
    return corrupt('block ' .. cidr .. ' has a slot key but is not claimed in the tree')
  end
  redis.call('HDEL', pools, scope)
  redis.call('DEL', addrs, atree)
  if last then
    redis.call('DEL', slot)
    set_free(tree, bits, WIDTH[family])
  end
  return { 'closed', pool, block, last and 1 or 0 }
end

-- Arguments: family, bits, scope
-- Reply after the time: {"found", pool_json, block_json} | {"absent"}
function ops.pool(P, a)
  local family, bits, scope = a[1], a[2], a[3]
  local pools, _, _, cidr = pool_keys(P, family, bits, scope)
  local pool = redis.call('HGET', pools, scope)
  if not pool then
    return { 'absent' }
  end
  local block = redis.call('GET', P .. 'slot:' .. cidr)
  if not block then
    return corrupt('pool ' .. cidr .. ' has no slot key')
  end
  return { 'found', pool, block }
end

-- Arguments: family, bits, scope, rel, address_json
-- Reply after the time: {"claimed", rel} | {"taken"} | {"unknown"}
function ops.claim(P, a)
  local family, bits, scope, rel, address_json = a[1], a[2], a[3], a[4], a[5]
  local pools, addrs, atree = pool_keys(P, family, bits, scope)
  if redis.call('HEXISTS', pools, scope) == 0 then
    return { 'unknown' }
  end
  -- Address trees only ever claim leaves, so a leaf's own record tells all.
  if redis.call('HGET', atree, rel) == CLAIMED then
    return { 'taken' }
  end
  set_claimed(atree, rel, WIDTH[family] - #bits)
  redis.call('HSET', addrs, address_text(family, bits .. rel), address_json)
  return { 'claimed', rel }
end

-- `found` when it is at most `last` (equal-length bit strings compare as numbers).
local function not_after(found, last)
  if found and found <= last then
    return found
  end
  return nil
end

-- Arguments: family, bits, scope, first, last, serial ("1"|"0"), address_json
--       first and last are rel bit strings inside the block; first "-" is an empty range.
-- Reply after the time: {"claimed", rel} | {"none"} | {"unknown"}
function ops.claim_next(P, a)
  local family, bits, scope, first, last, serial, address_json =
    a[1], a[2], a[3], a[4], a[5], a[6] == '1', a[7]
  local pools, addrs, atree = pool_keys(P, family, bits, scope)
  local pool = redis.call('HGET', pools, scope)
  if not pool then
    return { 'unknown' }
  end
  if first == '-' then
    return { 'none' }
  end
  local depth = WIDTH[family] - #bits
  local found = nil
  if serial then
    -- Round robin: search on from just after the last serial claim, then wrap.
    local cursor = redis.call('HGET', atree, 'cursor')
    if cursor and first <= cursor and cursor < last then
      found = not_after(find_first(atree, '', depth, increment(cursor), depth), last)
    end
  end
  if not found then
    found = not_after(find_first(atree, '', depth, first, depth), last)
  end
  if not found then
    return { 'none' }
  end
  local text = address_text(family, bits .. found)
  local pool_head = nil
  if serial then
    -- The pool JSON is written by Python and always ends with its "cursor" member.
    pool_head = string.match(pool, '^(.*),"cursor":[^,]*}$')
    if not pool_head then
      return corrupt('pool ' .. cidr_text(family, bits) .. ' ' .. scope .. ' has unreadable JSON')
    end
  end
  set_claimed(atree, found, depth)
  redis.call('HSET', addrs, text, address_json)
  if serial then
    redis.call('HSET', atree, 'cursor', found)
    redis.call('HSET', pools, scope, pool_head .. ',"cursor":"' .. text .. '"}')
  end
  return { 'claimed', found }
end

-- Arguments: family, bits, scope, rel
-- Reply after the time: {"released"} | {"absent"} | {"unknown"}
function ops.release(P, a)
  local family, bits, scope, rel = a[1], a[2], a[3], a[4]
  local pools, addrs, atree = pool_keys(P, family, bits, scope)
  if redis.call('HEXISTS', pools, scope) == 0 then
    return { 'unknown' }
  end
  if redis.call('HGET', atree, rel) ~= CLAIMED then
    return { 'absent' }
  end
  set_free(atree, rel, WIDTH[family] - #bits)
  redis.call('HDEL', addrs, address_text(family, bits .. rel))
  return { 'released' }
end

-- Arguments: family, bits, scope
-- Reply after the time: {"found", address text, JSON record, ...} | {"unknown"}
function ops.addresses(P, a)
  local family, bits, scope = a[1], a[2], a[3]
  local pools, addrs = pool_keys(P, family, bits, scope)
  if redis.call('HEXISTS', pools, scope) == 0 then
    return { 'unknown' }
  end
  local reply = redis.call('HGETALL', addrs)
  table.insert(reply, 1, 'found')
  return reply
end

-- Arguments: name, default
-- Reply after the time: {"found", value}
function ops.setting(P, a)
  local settings = P .. 'settings'
  redis.call('HSETNX', settings, a[1], a[2])
  return { 'found', redis.call('HGET', settings, a[1]) }
end

-- ---------------------------------------------------------------------------
-- Abandoned requests
-- ---------------------------------------------------------------------------

local ABANDONED = 'abandoned'
local REQUEST_TTL = 3600 -- seconds; far beyond any deadline

-- A pool's JSON without its trailing "cursor" member, which serial claims rewrite.
local function pool_head(json)
  return string.match(json, '^(.*),"cursor":[^,]*}$') or json
end

-- How to undo a call that changed the map, from its arguments and reply; nil
-- when it changed nothing.
local undo_of = {}

function undo_of.open_exact(a, reply)
  if reply[1] == 'granted' and reply[6] == 1 then
    return { undo = 'close', family = reply[2], bits = reply[3], scope = a[3], pool = reply[5] }
  end
end

function undo_of.open_any(a, reply)
  if reply[1] == 'granted' and reply[6] == 1 then
    return { undo = 'close', family = reply[2], bits = reply[3], scope = a[1], pool = reply[5] }
  end
end

function undo_of.claim(a, reply)
  if reply[1] == 'claimed' then
    return { undo = 'release', family = a[1], bits = a[2], scope = a[3], rel = reply[2], address = a[5] }
  end
end

function undo_of.claim_next(a, reply)
  if reply[1] == 'claimed' then
    return { undo = 'release', family = a[1], bits = a[2], scope = a[3], rel = reply[2], address = a[7] }
  end
end

-- The operations that take a request id and honour its "abandoned" marker.
local MUTATING = { open_exact = true, open_any = true, close = true, claim = true, claim_next = true, release = true }

-- Arguments: none (the request id is ARGV[4])
-- Reply after the time: {"undone"} | {"abandoned"}
-- Undoes the request's change if it landed and the pool or address is still the
-- one it created (not since closed and claimed anew); then marks it abandoned.
function ops.abandon(P, _, id)
  local key = P .. 'req:' .. id
  local record = redis.call('GET', key)
  local status = 'abandoned'
  if record and record ~= ABANDONED then
    local u = cjson.decode(record)
    local pools, addrs = pool_keys(P, u.family, u.bits, u.scope)
    local pool = redis.call('HGET', pools, u.scope)
    if pool and u.undo == 'close' and pool_head(pool) == pool_head(u.pool) then
      local reply = ops.close(P, { u.family, u.bits, u.scope })
      if reply.err then
        return reply
      end
      status = 'undone'
    elseif pool and u.undo == 'release' then
      local text = address_text(u.family, u.bits .. u.rel)
      if redis.call('HGET', addrs, text) == u.address then
        ops.release(P, { u.family, u.bits, u.scope, u.rel })
        status = 'undone'
      end
    end
  end
  redis.call('SET', key, ABANDONED, 'EX', REQUEST_TTL)
  return { status }
end

-- ---------------------------------------------------------------------------
-- Dispatch
-- ---------------------------------------------------------------------------

local op = ops[ARGV[1]]
if not op then
  return redis.error_reply('ERR unknown mini-ipam operation ' .. tostring(ARGV[1]))
end
local time = redis.call('TIME')
local stamp = time[1] .. string.format('%06d', tonumber(time[2]))
local deadline = tonumber(ARGV[3])
if deadline > 0 and tonumber(stamp) > deadline then
  -- The caller has given up waiting: running now would change the map behind its back.
  return { stamp, 'expired' }
end
local P, id, args = ARGV[2], ARGV[4], { unpack(ARGV, 5) }
if MUTATING[ARGV[1]] and id ~= '' and redis.call('EXISTS', P .. 'req:' .. id) == 1 then
  -- Abandoned by the caller before it got here: running now would change the map behind its back.
  return { stamp, 'expired' }
end
local reply = op(P, args, id)
if reply.err then
  return reply
end
local undo = undo_of[ARGV[1]]
if undo and id ~= '' then
  local record = undo(args, reply)
  if record then
    redis.call('SET', P .. 'req:' .. id, cjson.encode(record), 'EX', REQUEST_TTL)
  end
end
table.insert(reply, 1, stamp)
return reply
