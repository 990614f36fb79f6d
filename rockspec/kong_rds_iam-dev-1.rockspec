rockspec_format = "3.0"
package = "kong_rds_iam"
version = "dev-1"
source = {
   url = "git+file:///kong_rds_iam",
}
description = {
   summary = "AWS RDS IAM database authentication for OpenResty and Kong",
   detailed = [[
      A Rust Lua module: token(conf) signs RDS IAM auth tokens with AWS
      credentials from the standard chain (frozen at load, fork-safe), and
      connect(conf) opens TLS PostgreSQL connections authenticated with them.
      conf speaks kong.conf's vocabulary. Builds offline with cargo.
   ]],
   license = "Apache-2.0",
}
dependencies = {
   "lua >= 5.1",
}
build = {
   type = "command",
   -- LuaJIT and PUC 5.1 share one build (mlua's luajit flavour loads in both);
   -- 5.4 gets its own.
   build_command = [[case "$(LUA) $(LUA_INCDIR)" in *5.4*) f=lua54 ;; *) f=luajit ;; esac; FEATURES=$f OUT=target/rock scripts/build]],
   install = {
      lib = {
         kong_rds_iam = "target/rock/kong_rds_iam.so",
         -- next to the module, where rds.rds_ca_bundle() finds it
         ["kong_rds_iam.rds-ca-bundle"] = "data/rds-ca-bundle.pem",
      },
      lua = {
         ["kong_rds_iam.kong"] = "lua/kong_rds_iam/kong.lua",
         ["kong_rds_iam.pgmoon"] = "lua/kong_rds_iam/pgmoon.lua",
         ["kong_rds_iam.redis"] = "lua/kong_rds_iam/redis.lua",
         ["kong_rds_iam.pgmoon.arrays"] = "lua/kong_rds_iam/pgmoon/arrays.lua",
         ["kong_rds_iam.pgmoon.json"] = "lua/kong_rds_iam/pgmoon/json.lua",
         ["kong_rds_iam.pgmoon.escape"] = "lua/kong_rds_iam/pgmoon/escape.lua",
         ["kong_rds_iam.conf"] = "lua/kong_rds_iam/conf.lua",
         ["kong_rds_iam.explain"] = "lua/kong_rds_iam/explain.lua",
      },
      bin = {
         ["kong-rds-iam"] = "bin/kong-rds-iam",
      },
   },
}
