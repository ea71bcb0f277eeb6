-- Argo CD health check for dagoperator.io/Backfill
-- (resource.customizations.health.dagoperator.io_Backfill). Reads status.phase.
local hs = {}
local function ready_message()
  if obj.status ~= nil and obj.status.conditions ~= nil then
    for _, c in ipairs(obj.status.conditions) do
      if c.type == "Ready" then return c.message or "" end
    end
  end
  return ""
end
local phase = obj.status and obj.status.phase
if phase == "Succeeded" then
  hs.status = "Healthy"
elseif phase == "Failed" or phase == "Invalid" then
  hs.status = "Degraded"
elseif phase == "Suspended" then
  hs.status = "Suspended"
else
  hs.status = "Progressing"
end
hs.message = ready_message()
if phase == nil then
  hs.message = "Waiting for the operator"
end
return hs
