-- stand-in for kong.global: only the phases table the connector reads
local phases = {
  init = 0x1, init_worker = 0x2, certificate = 0x4, rewrite = 0x10, access = 0x20,
  balancer = 0x40, response = 0x80, header_filter = 0x200, body_filter = 0x400,
  log = 0x2000, admin_api = 0x10000000,
}
return { phases = phases }
