-- 10,000 rows x 6 columns of mixed types (int4, int8, text, bool, float8,
-- timestamptz) for the nginx decode benchmark (bench/nginx/run): decoded
-- into Lua tables by kong_rds_iam and by pgmoon. int8 values stay below
-- 2^53, so both drivers give Lua numbers.
drop table if exists bench_rows_mixed;
create table bench_rows_mixed (
  id      integer primary key,
  big     bigint not null,
  name    text not null,
  flag    boolean not null,
  score   double precision not null,
  created timestamptz not null
);
insert into bench_rows_mixed
select i,
       i::bigint * 1000000007,
       'name-' || i || '-' || md5(i::text),
       i % 2 = 0,
       i * 1.25,
       timestamptz '2024-01-01 00:00:00+00' + i * interval '1 minute'
from generate_series(1, 10000) as g(i);
analyze bench_rows_mixed;
grant select on bench_rows_mixed to public;
