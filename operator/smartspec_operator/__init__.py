"""The smartspec kopf operator: SpeculativeService -> Deployments/Services/ConfigMap, SpeculationPolicy -> Redis."""
