-- 10,000 rows x 6 columns (int, text, bool, float8, timestamptz, jsonb) for the decode benchmark.
drop table if exists bench_rows;
create table bench_rows (
  id      integer primary key,
  name    text not null,
  flag    boolean not null,
  score   double precision not null,
  created timestamptz not null,
  doc     jsonb not null
);
insert into bench_rows
select i,
       'name-' || i || '-' || md5(i::text),
       i % 2 = 0,
       i * 1.25,
       timestamptz '2024-01-01 00:00:00+00' + i * interval '1 minute',
       jsonb_build_object('id', i, 'tag', 'tag' || (i % 10), 'ok', i % 3 = 0, 'vals', jsonb_build_array(i, i + 1))
from generate_series(1, 10000) as g(i);
analyze bench_rows;
grant select on bench_rows to public;
