-- Argo CD health check for dagoperator.io/Pool (resource.customizations.health.dagoperator.io_Pool).
-- A full Pool is healthy: tasks wait for slots by design.
local hs = {}
if obj.status == nil or obj.status.observedGeneration ~= obj.metadata.generation then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe this generation"
  return hs
end
hs.status = "Progressing"
hs.message = "Waiting for the operator"
if obj.status.conditions ~= nil then
  for _, c in ipairs(obj.status.conditions) do
    if c.type == "Ready" and c.status == "True" then
      hs.status = "Healthy"
      hs.message = c.message or ""
    end
  end
end
return hs
