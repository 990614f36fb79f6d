select id, name, flag, score, created, doc from bench_rows order by id;
