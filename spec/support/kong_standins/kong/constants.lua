-- stand-in for kong.constants: CORE_ENTITIES only
return {
  CORE_ENTITIES = {
    "workspaces", "consumers", "certificates", "services", "routes", "snis",
    "upstreams", "targets", "plugins", "tags", "ca_certificates", "clustering_data_planes",
    "parameters", "vaults", "key_sets", "keys", "filter_chains",
  },
}
