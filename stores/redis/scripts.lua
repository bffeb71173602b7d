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
  ARGV[5]  the map's id as the caller knows it, or "*" for a reader that knows none
           (allowed for the operations that change nothing). See "The map's identity".
  ARGV[6]  "<seen> <own>": the highest generation of the map the caller has seen, and
           the generation its own last change made ("0 0" for none)
  ARGV[7]  the calling host (an owner string)
  ARGV[8]  request ids, separated by spaces, whose replies the caller has received:
           their undo records are no longer needed and are deleted
  ARGV[9…] the operation's arguments, listed above each operation

Every reply is an array: the server time (Unix microseconds, as a string), the
map's generation, the generation of the caller's own last change as the map
recorded it, then a status word, then the operation's values. The time lets
the caller track the offset between its clock and the server's, from which it
computes deadlines.

The map's identity
  P.."map" holds the map's "id" (random, made once with the map), its "gen"
  (counted up by every call that changes the map), "made" (when, server time µs),
  "from" (the id of the map this one replaced, if any), "m:"..host (the generation
  of each host's last change) and, while the map is being rebuilt after a loss,
  "until" and "cap" (server time µs: see `recovered`). A call (other than the identity operations below and
  "abandon") whose map id is not the map's, or whose generation seen is above the
  map's, or whose own last change is above what the map recorded for its host
  (other hosts' changes since an older copy was restored cannot hide that one),
  or that finds no P.."map" at all, changes nothing and replies
  {now, gen, own, "lost", why, map id or "", gen}: the map was flushed, evicted,
  restored from an older copy, or replaced by another host's recovery. Such a
  caller re-asserts what it holds ("restore") before it claims anything again.

  While "until" is set the map is *recovering*: new blocks (open_exact,
  open_any) and next addresses in pools the caller does not own (claim_next)
  are refused with {now, gen, "recovering", until}, until every host in P.."expect"
  is in P.."restored", or the server time passes "until" and no expected host that
  has not re-asserted still heartbeats (up to "cap"); the first call after that
  clears the recovery. Explicit addresses, releases and restores go on.

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
                                      EX 3600 (see "Abandoned requests"); deleted as soon
                                      as the caller says it received the reply (ARGV[8])
  P.."map"                     hash   the map's identity (see above)
  P.."expect", P.."restored"   set    while recovering: hosts expected to re-assert, and
                                      those that have
  P.."cleaned"                 set    while recovering: hosts that dropped the pools they had
                                      released since the copy the map came back from
  P.."alive"                   zset   host -> server time (s) of its last heartbeat
  P.."parents"                 set    "<family>:<bits>" of every parent whose usage is counted
  P.."usage:<family>:<bits>"   hash   that parent's counters (see "Usage counters")
  P.."probe"                   string written by "status" to prove the server takes writes

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

-- A whole number as text: Lua's own tostring (and redis.call) write large ones as 1.7e+15.
local function int_text(number)
  return string.format('%.0f', number)
end

-- Set by the dispatch at the bottom, for the operations that depend on them (KNOWN: the
-- caller's map id, "*" for a reader).
local RECOVERING = nil -- the server time (µs, as text) until which the map recovers, or nil
local CALLER = '' -- the calling host (ARGV[7])
local KNOWN = '*' -- the map id the caller knows (ARGV[5])

-- Whether a recovering map is done. When every expected host has re-asserted, it is;
-- before its time ("until"), it is not. After that time, an expected host that has not
-- re-asserted yet but still heartbeats (it is re-asserting, only slowly: a loaded host,
-- a long record) holds the recovery, up to "cap"; one that has gone silent does not, as
-- it may be gone for good. So the window is the least a recovery waits, never a reason to
-- hand out the blocks of a live host that is still putting them back.
local function recovered(P, till, now)
  local missing = redis.call('SDIFF', P .. 'expect', P .. 'restored')
  if #missing == 0 and redis.call('SCARD', P .. 'expect') > 0 then
    return true
  end
  if now < tonumber(till) then
    return false
  end
  local m = redis.call('HMGET', P .. 'map', 'made', 'cap')
  local made, cap = tonumber(m[1] or '0'), tonumber(m[2] or '0')
  if now >= cap then
    return true
  end
  local window = tonumber(till) - made
  for _, host in ipairs(missing) do
    local beat = redis.call('ZSCORE', P .. 'alive', host)
    if beat and tonumber(beat) * 1e6 >= now - window - 1e6 then
      return false
    end
  end
  return true
end

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

-- ---------------------------------------------------------------------------
-- Usage counters: what /metrics and `ls --summary` read, in constant time
-- ---------------------------------------------------------------------------

-- The parents whose usage is counted are members "<family>:<bits>" of P.."parents";
-- each has a hash P.."usage:<family>:<bits>" of
--   "b"..len   claimed blocks of prefix length len inside the parent
--   "a"..len   claimed addresses in the pools of those blocks
--   "around"   claimed blocks that hold the whole parent (a block around it)
-- They change in the same atomic step as the tree, so they always agree with it;
-- a map that lost them lost its tree too. A parent is counted from the first
-- "usage" call that names it (which counts what is there, once).

-- The tracked parents that a block (family, bits) concerns: {parent, inside (true) | around (false)}.
local function tracked_over(P, family, bits)
  local found = {}
  for _, parent in ipairs(redis.call('SMEMBERS', P .. 'parents')) do
    local parent_family, parent_bits = string.match(parent, '^(%d):([01]*)$')
    if parent_family == family then
      if string.sub(bits, 1, #parent_bits) == parent_bits then
        found[#found + 1] = { parent, true }
      elseif string.sub(parent_bits, 1, #bits) == bits then
        found[#found + 1] = { parent, false }
      end
    end
  end
  return found
end

-- Count a block claimed (step 1) or freed (step -1).
local function count_block(P, family, bits, step)
  for _, hit in ipairs(tracked_over(P, family, bits)) do
    redis.call('HINCRBY', P .. 'usage:' .. hit[1], hit[2] and ('b' .. #bits) or 'around', step)
  end
end

-- Count `step` addresses claimed (or, negative, released) in a pool of the block (family, bits).
local function count_addresses(P, family, bits, step)
  if step == 0 then
    return
  end
  for _, hit in ipairs(tracked_over(P, family, bits)) do
    if hit[2] then
      redis.call('HINCRBY', P .. 'usage:' .. hit[1], 'a' .. #bits, step)
    end
  end
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
  count_block(P, family, bits, 1)
  return { 'granted', family, bits, block_json, pool_json, 1 }
end

local ops = {}

-- Arguments: family, bits, scope, block_json, pool_json, share ("1"|"0"), share_label
-- Reply after the time and generation: {"granted", family, bits, block_json, pool_json, created (1|0)}
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
-- Reply after the time and generation: as open_exact's "granted" | {"exhausted"}
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
-- Reply after the time and generation: {"closed", pool_json, block_json, freed (1|0)} | {"absent"}
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
  count_addresses(P, family, bits, -redis.call('HLEN', addrs))
  redis.call('HDEL', pools, scope)
  redis.call('DEL', addrs, atree)
  if last then
    redis.call('DEL', slot)
    set_free(tree, bits, WIDTH[family])
    count_block(P, family, bits, -1)
  end
  return { 'closed', pool, block, last and 1 or 0 }
end

-- Arguments: family, bits, scope
-- Reply after the time and generation: {"found", pool_json, block_json} | {"absent"}
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
-- Reply after the time and generation: {"claimed", rel} | {"taken"} | {"unknown"}
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
  count_addresses(P, family, bits, 1)
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
-- Reply after the time and generation: {"claimed", rel} | {"none"} | {"unknown"}
function ops.claim_next(P, a)
  local family, bits, scope, first, last, serial, address_json =
    a[1], a[2], a[3], a[4], a[5], a[6] == '1', a[7]
  local pools, addrs, atree = pool_keys(P, family, bits, scope)
  local pool = redis.call('HGET', pools, scope)
  if not pool then
    return { 'unknown' }
  end
  if RECOVERING and cjson.decode(pool).owner ~= CALLER then
    -- Its owner may not have re-asserted the addresses it handed out yet.
    return { 'recovering', RECOVERING }
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
  count_addresses(P, family, bits, 1)
  if serial then
    redis.call('HSET', atree, 'cursor', found)
    redis.call('HSET', pools, scope, pool_head .. ',"cursor":"' .. text .. '"}')
  end
  return { 'claimed', found }
end

-- Arguments: family, bits, scope, rel
-- Reply after the time and generation: {"released"} | {"absent"} | {"unknown"}
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
  count_addresses(P, family, bits, -1)
  return { 'released' }
end

-- Arguments: family, bits, scope
-- Reply after the time and generation: {"found", address text, JSON record, ...} | {"unknown"}
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

-- Start counting the usage of a parent (family, bits): count what the map holds there now.
-- Costs a walk of the family's tree, once per parent (and again only if the map lost it).
local function track(P, family, bits)
  local parent = family .. ':' .. bits
  local counters = P .. 'usage:' .. parent
  redis.call('DEL', counters)
  redis.call('SADD', P .. 'parents', parent)
  local tree = redis.call('HGETALL', P .. 'tree:' .. family)
  for i = 1, #tree - 1, 2 do
    local node = tree[i]
    if tree[i + 1] == CLAIMED then
      if string.sub(node, 1, #bits) == bits then
        redis.call('HINCRBY', counters, 'b' .. #node, 1)
        local pools = P .. 'pools:' .. cidr_text(family, node)
        local held = 0
        for _, scope in ipairs(redis.call('HKEYS', pools)) do
          local _, addrs = pool_keys(P, family, node, scope)
          held = held + redis.call('HLEN', addrs)
        end
        if held > 0 then
          redis.call('HINCRBY', counters, 'a' .. #node, held)
        end
      elseif string.sub(bits, 1, #node) == node then
        redis.call('HINCRBY', counters, 'around', 1)
      end
    end
  end
end

-- Arguments: track ("1": start counting a parent not counted yet; "0": report it untracked),
--            then (family, parent bits) pairs
-- Reply after the time and generation: {"usage", then per parent: family, bits,
--      "untracked" | (the prefix length of its largest free block or "-" when full,
--      the number of counter fields, then field, value, ...)}
function ops.usage(P, a)
  local reply = { 'usage' }
  local may_track = a[1] == '1' and KNOWN ~= '*'
  for i = 2, #a - 1, 2 do
    local family, bits = a[i], a[i + 1]
    reply[#reply + 1] = family
    reply[#reply + 1] = bits
    local tracked = redis.call('SISMEMBER', P .. 'parents', family .. ':' .. bits) == 1
    if not tracked and may_track then
      track(P, family, bits)
      tracked = true
    end
    if not tracked then
      reply[#reply + 1] = 'untracked'
    else
      local tree, width = P .. 'tree:' .. family, WIDTH[family]
      local largest = '-'
      if not claimed_ancestor(tree, bits) then
        local free = free_len(redis.call('HGET', tree, bits), bits, width)
        if free <= width then
          largest = tostring(free)
        end
      end
      reply[#reply + 1] = largest
      local counters = redis.call('HGETALL', P .. 'usage:' .. family .. ':' .. bits)
      reply[#reply + 1] = #counters / 2
      for j = 1, #counters do
        reply[#reply + 1] = counters[j]
      end
    end
  end
  return reply
end

-- Arguments: name
-- Reply after the time and generation: {"found", value} | {"absent"}
function ops.setting(P, a)
  local value = redis.call('HGET', P .. 'settings', a[1])
  if not value then
    return { 'absent' }
  end
  return { 'found', value }
end

-- Arguments: name, value
-- Reply after the time and generation: {"found", the stored value}: ``value`` unless one was stored before
function ops.make_setting(P, a)
  local settings = P .. 'settings'
  redis.call('HSETNX', settings, a[1], a[2])
  return { 'found', redis.call('HGET', settings, a[1]) }
end

-- ---------------------------------------------------------------------------
-- The map's identity, and rebuilding a lost map
-- ---------------------------------------------------------------------------

-- Arguments: probe ("1": write P.."probe", to prove the server takes writes, and count as the
--            caller's heartbeat in P.."alive"), alive since (s)
-- Reply after the time and generation: {"map", id or "", gen, made, till or "0", from,
--      live hosts (space-separated), the generation of the caller's last change,
--      hosts expected to re-assert, hosts that have, hosts that dropped what they had released
--      (while recovering; space-separated)}
function ops.status(P, a, _, now)
  if a[1] == '1' then
    redis.call('SET', P .. 'probe', int_text(now), 'PX', 60000)
    if CALLER ~= '' then
      -- A member's look at the map is a heartbeat too, and a frequent one: a map being
      -- rebuilt waits for the members that still beat (see `recovered`).
      redis.call('ZADD', P .. 'alive', math.floor(now / 1e6), CALLER)
    end
  end
  local m = redis.call('HMGET', P .. 'map', 'id', 'gen', 'made', 'until', 'from', 'm:' .. CALLER)
  local alive = redis.call('ZRANGEBYSCORE', P .. 'alive', a[2], '+inf')
  local expect = table.concat(redis.call('SMEMBERS', P .. 'expect'), ' ')
  local restored = table.concat(redis.call('SMEMBERS', P .. 'restored'), ' ')
  local cleaned = table.concat(redis.call('SMEMBERS', P .. 'cleaned'), ' ')
  return {
    'map', m[1] or '', m[2] or '0', m[3] or '0', m[4] or '0', m[5] or '', table.concat(alive, ' '), m[6] or '0',
    expect, restored, cleaned,
  }
end

-- Arguments: known id ("" for none), window (µs; 0 for none), new id, then
--            "expect", the hosts to wait for..., "settings", name, value, ...
-- Reply after the time and generation: {"made" | "joined", id, gen, till or "0", the caller's own last change}
-- Makes the map when there is none, or replaces one that went back in generation
-- (its id is the caller's, and the caller has seen a later generation, or made a later
-- change, than the map has), as a recovering map; otherwise joins the map there is.
function ops.recover(P, a, _, now, seen, host, own)
  local map = P .. 'map'
  local known, window, new_id = a[1], tonumber(a[2]), a[3]
  local m = redis.call('HMGET', map, 'id', 'gen', 'm:' .. host)
  local behind = tonumber(m[2] or '0') < seen or tonumber(m[3] or '0') < own
  if m[1] and not (m[1] == known and behind) then
    return { 'joined', m[1], m[2], redis.call('HGET', map, 'until') or '0', m[3] or '0' }
  end
  local gen = math.max(tonumber(m[2] or '0'), seen) + 1
  redis.call('DEL', P .. 'expect', P .. 'restored', P .. 'cleaned')
  for _, field in ipairs(redis.call('HKEYS', map)) do
    if string.sub(field, 1, 2) == 'm:' then
      redis.call('HDEL', map, field) -- the members' last changes were in the map this one replaces
    end
  end
  redis.call('HSET', map, 'id', new_id, 'gen', int_text(gen), 'made', int_text(now), 'from', known)
  local till = '0'
  if window > 0 then
    till = int_text(now + window)
    -- However slow a live host is to re-assert, new blocks wait for it at most this long.
    local cap = int_text(now + math.max(15 * window, 60e6))
    redis.call('HSET', map, 'until', till, 'cap', cap)
  else
    redis.call('HDEL', map, 'until', 'cap')
  end
  local i = 4
  if a[i] == 'expect' then
    i = i + 1
    while a[i] and a[i] ~= 'settings' do
      redis.call('SADD', P .. 'expect', a[i])
      i = i + 1
    end
  end
  if a[i] == 'settings' then
    for j = i + 1, #a - 1, 2 do
      redis.call('HSETNX', P .. 'settings', a[j], a[j + 1])
    end
  end
  return { 'made', new_id, int_text(gen), till, '0' }
end

-- Arguments: family, bits, scope, block_json, pool_json, then (rel, address_json) pairs
-- Reply after the time and generation: {"restored", addresses added} | {"overlap", family, holder_bits, holder_block_json}
-- Puts a pool back exactly as the caller recorded it: its block, the pool (unless it is
-- there), and every address not claimed. The block may already be there: the same block
-- (same label and owner) as recorded, or, for a pool that had joined a block of another
-- owner (a shared one), a block of the same label. Anything else overlapping is refused.
function ops.restore(P, a)
  local family, bits, scope, block_json, pool_json = a[1], a[2], a[3], a[4], a[5]
  local pools, addrs, atree, cidr = pool_keys(P, family, bits, scope)
  local found = holder(P .. 'tree:' .. family, bits)
  if not found then
    local reply = claim_block(P, family, bits, scope, block_json, pool_json)
    if reply.err then
      return reply
    end
  else
    local held = redis.call('GET', P .. 'slot:' .. cidr_text(family, found))
    if not held then
      return corrupt('block ' .. cidr_text(family, found) .. ' is claimed in the tree but has no slot key')
    end
    local there, mine = cjson.decode(held), cjson.decode(block_json)
    local joined = cjson.decode(pool_json).owner ~= mine.owner
    if found ~= bits or there.label ~= mine.label or (there.owner ~= mine.owner and not joined) then
      return { 'overlap', family, found, held }
    end
    if redis.call('HEXISTS', pools, scope) == 0 then
      redis.call('HSET', pools, scope, pool_json)
    end
  end
  local depth = WIDTH[family] - #bits
  local added = 0
  for i = 6, #a - 1, 2 do
    local rel = a[i]
    if redis.call('HGET', atree, rel) ~= CLAIMED then
      set_claimed(atree, rel, depth)
      redis.call('HSET', addrs, address_text(family, bits .. rel), a[i + 1])
      added = added + 1
    end
  end
  count_addresses(P, family, bits, added)
  return { 'restored', added }
end

-- Arguments: name, value
-- Reply after the time and generation: {"found", the stored value} (``value`` unless another was stored)
ops.restore_setting = ops.make_setting

-- Arguments: none (the host is ARGV[7])
-- Reply after the time and generation: {"map"}
-- Says the caller has dropped the pools it released since the copy the map came back from.
function ops.cleaned(P, _, _, _, _, host)
  if redis.call('HEXISTS', P .. 'map', 'until') == 1 then
    redis.call('SADD', P .. 'cleaned', host)
  end
  return { 'map' }
end

-- Arguments: none (the host is ARGV[7])
-- Reply after the time and generation: {"map", till or "0"}
function ops.restored(P, _, _, now, _, host)
  local till = redis.call('HGET', P .. 'map', 'until')
  if till then
    redis.call('SADD', P .. 'restored', host)
    if recovered(P, till, now) then
      redis.call('HDEL', P .. 'map', 'until', 'cap')
      redis.call('DEL', P .. 'expect', P .. 'restored', P .. 'cleaned')
      till = nil
    end
  end
  return { 'map', till or '0' }
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
local MUTATING = {
  open_exact = true, open_any = true, close = true, claim = true, claim_next = true, release = true,
  make_setting = true, restore = true, restore_setting = true,
}

-- Arguments: none (the request id is ARGV[4])
-- Reply after the time and generation: {"undone"} | {"abandoned"}
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

-- Operations that change the map, and so count its generation up when they did.
local CHANGED = { granted = true, closed = true, claimed = true, released = true, restored = true, undone = true }
-- Operations that run whatever the map's identity (they read it, make it, or undo a call).
local UNCHECKED = { status = true, recover = true, abandon = true }
-- Operations a reader that knows no map id may run.
local READS = { pool = true, addresses = true, setting = true, usage = true }
-- Operations refused while the map recovers.
local GATED = { open_exact = true, open_any = true }

local name = ARGV[1]
local op = ops[name]
if not op then
  return redis.error_reply('ERR unknown mini-ipam operation ' .. tostring(name))
end
local time = redis.call('TIME')
local stamp = time[1] .. string.format('%06d', tonumber(time[2]))
local now = tonumber(stamp)
local deadline = tonumber(ARGV[3])
local P, id, known = ARGV[2], ARGV[4], ARGV[5]
local seen_text, own_text = string.match(ARGV[6], '^(%d+) (%d+)$')
local seen, own = tonumber(seen_text), tonumber(own_text)
CALLER = ARGV[7]
KNOWN = known
if ARGV[8] ~= '' then
  local done = {}
  for request in string.gmatch(ARGV[8], '%S+') do
    done[#done + 1] = P .. 'req:' .. request
  end
  redis.call('DEL', unpack(done))
end
local map = P .. 'map'
local m = redis.call('HMGET', map, 'id', 'gen', 'until', 'm:' .. CALLER)
local gen, mine = m[2] or '0', m[4] or '0'
if deadline > 0 and now > deadline then
  -- The caller has given up waiting: running now would change the map behind its back.
  return { stamp, gen, mine, 'expired' }
end
if MUTATING[name] and id ~= '' and redis.call('EXISTS', P .. 'req:' .. id) == 1 then
  -- Abandoned by the caller before it got here: running now would change the map behind its back.
  return { stamp, gen, mine, 'expired' }
end
if not UNCHECKED[name] and not (known == '*' and READS[name]) then
  if not m[1] then
    return { stamp, gen, mine, 'lost', 'absent', '', gen }
  end
  if m[1] ~= known then
    return { stamp, gen, mine, 'lost', 'replaced', m[1], gen }
  end
  if tonumber(gen) < seen or tonumber(mine) < own then
    return { stamp, gen, mine, 'lost', 'behind', m[1], gen }
  end
end
if m[3] then
  if recovered(P, m[3], now) then
    redis.call('HDEL', map, 'until', 'cap')
    redis.call('DEL', P .. 'expect', P .. 'restored', P .. 'cleaned')
  else
    -- Past "until", a live host still re-asserting holds it: say "a second from now" then.
    RECOVERING = now < tonumber(m[3]) and m[3] or int_text(now + 1e6)
    if GATED[name] then
      return { stamp, gen, mine, 'recovering', RECOVERING }
    end
  end
end
local args = { unpack(ARGV, 9) }
local reply = op(P, args, id, now, seen, CALLER, own)
if reply.err then
  return reply
end
if CHANGED[reply[1]] and not (reply[1] == 'granted' and reply[6] == 0) then
  gen = tostring(redis.call('HINCRBY', map, 'gen', 1))
  mine = gen
  redis.call('HSET', map, 'm:' .. CALLER, mine)
elseif name == 'recover' then
  gen = reply[3]
  mine = redis.call('HGET', map, 'm:' .. CALLER) or '0'
end
local undo = undo_of[name]
if undo and id ~= '' then
  local record = undo(args, reply)
  if record then
    redis.call('SET', P .. 'req:' .. id, cjson.encode(record), 'EX', REQUEST_TTL)
  end
end
table.insert(reply, 1, mine)
table.insert(reply, 1, gen)
table.insert(reply, 1, stamp)
return reply
