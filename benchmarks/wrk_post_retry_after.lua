-- As wrk_post.lua, for clients that honour Retry-After: after a 503 the next request of
-- this thread waits RETRY_AFTER_MS (default 1000). Used by benchmarks/latency_target.py.
wrk.method = "POST"
local f = assert(io.open(os.getenv("BODY_FILE"), "rb"))
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = os.getenv("CONTENT_TYPE") or "application/json"

local wait = tonumber(os.getenv("RETRY_AFTER_MS") or "1000")
local refused = 0

function response(status, headers, body)
  if status == 503 then
    refused = refused + 1
  end
end

function delay()
  if refused > 0 then
    refused = refused - 1
    return wait
  end
  return 0
end
