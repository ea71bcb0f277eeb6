-- Argo CD health check for dagoperator.io/DAG (resource.customizations.health.dagoperator.io_DAG).
-- Reads the kstatus conditions the operator writes (docs/SEMANTICS.md, "Conditions").
local hs = {}
local function condition(type_)
  if obj.status ~= nil and obj.status.conditions ~= nil then
    for _, c in ipairs(obj.status.conditions) do
      if c.type == type_ then return c end
    end
  end
  return nil
end
if obj.status == nil or obj.status.observedGeneration == nil
    or obj.status.observedGeneration ~= obj.metadata.generation then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe this generation"
  return hs
end
local ready, stalled, reconciling = condition("Ready"), condition("Stalled"), condition("Reconciling")
if stalled ~= nil and stalled.status == "True" then
  hs.status = "Degraded"
  hs.message = stalled.reason .. ": " .. (stalled.message or "")
  return hs
end
if ready ~= nil and ready.status == "False" and ready.reason == "RunsFailing" then
  hs.status = "Degraded"
  hs.message = ready.message or "its newest runs failed"
  return hs
end
if reconciling ~= nil and reconciling.status == "True" then
  hs.status = "Progressing"
  hs.message = reconciling.reason .. ": " .. (reconciling.message or "")
  return hs
end
if obj.spec ~= nil and obj.spec.suspend == true then
  hs.status = "Suspended"
  hs.message = "suspended: no new scheduled runs"
  return hs
end
if ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
  hs.message = ready.message or ""
  return hs
end
hs.status = "Progressing"
hs.message = (ready and ready.message) or "Waiting for the operator"
return hs
