-- A new user on every request: `wrk … -s unique.lua URL -- HEADER PREFIX
-- START WINDOW THREADS "name: value" …` sets HEADER to PREFIX..n with n
-- running through START .. START+WINDOW-1, interleaved over the threads
-- (wrapping after WINDOW requests: the runner counts token lookups to tell).
local dir = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(dir .. "report.lua")

local counter = 0
local threads = 0  -- setup() numbers the threads; each thread sees its own global `id`

function setup(thread)
   thread:set("id", threads)
   threads = threads + 1
end

function init(args)
   user_header = args[1]
   prefix = args[2]
   start = tonumber(args[3])
   window = tonumber(args[4])
   nthreads = tonumber(args[5])
   for i = 6, #args do
      local name, value = args[i]:match("^([^:]+):%s*(.*)$")
      if name then wrk.headers[name] = value end
   end
end

function request()
   local n = start + (id + counter * nthreads) % window
   counter = counter + 1
   wrk.headers[user_header] = prefix .. n
   return wrk.format()
end
