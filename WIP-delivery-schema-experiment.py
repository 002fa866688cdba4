import sqlite3, time, os, statistics, orjson
N=10000
payloads=[orjson.dumps({"sensor":"t1","v":i*0.5,"ts":1700000000+i,"tags":["a","b"]}).decode() for i in range(N)]
BASE="""
CREATE TABLE sync_queue (id INTEGER PRIMARY KEY AUTOINCREMENT, payload TEXT NOT NULL, priority INTEGER NOT NULL,
created_at REAL NOT NULL, ttl_seconds INTEGER NOT NULL, retry_count INTEGER NOT NULL DEFAULT 0, next_retry_at REAL NOT NULL DEFAULT 0);
CREATE INDEX idx_sync_queue_priority ON sync_queue(priority, next_retry_at);
"""
SCHEMAS={
 "A pk(dest,item)+due idx": """CREATE TABLE d (destination INTEGER NOT NULL, item_id INTEGER NOT NULL, priority INTEGER NOT NULL,
   retry_count INTEGER NOT NULL DEFAULT 0, next_retry_at REAL NOT NULL DEFAULT 0, PRIMARY KEY (destination, item_id)) WITHOUT ROWID;
   CREATE INDEX d_due ON d(destination, priority, next_retry_at);""",
 "B pk(dest,prio,next,item)": """CREATE TABLE d (destination INTEGER NOT NULL, priority INTEGER NOT NULL, next_retry_at REAL NOT NULL DEFAULT 0,
   item_id INTEGER NOT NULL, retry_count INTEGER NOT NULL DEFAULT 0, PRIMARY KEY (destination, priority, next_retry_at, item_id)) WITHOUT ROWID;""",
 "C pk(dest,item) only": """CREATE TABLE d (destination INTEGER NOT NULL, item_id INTEGER NOT NULL, priority INTEGER NOT NULL,
   retry_count INTEGER NOT NULL DEFAULT 0, next_retry_at REAL NOT NULL DEFAULT 0, PRIMARY KEY (destination, item_id)) WITHOUT ROWID;""",
}
def run(schema, dests, path):
    for s in ("","-wal","-shm"):
        try: os.remove(path+s)
        except FileNotFoundError: pass
    c=sqlite3.connect(path, isolation_level=None)
    c.execute("PRAGMA journal_mode=WAL"); c.execute("PRAGMA synchronous=FULL")
    c.executescript(BASE + (schema or ""))
    now=time.time()
    rows=[(p,3,now,86400) for p in payloads]
    t=time.perf_counter()
    for k in range(0,N,1000):
        c.execute("BEGIN IMMEDIATE")
        c.executemany("INSERT INTO sync_queue (payload, priority, created_at, ttl_seconds) VALUES (?,?,?,?)", rows[k:k+1000])
        last=c.execute("SELECT last_insert_rowid()").fetchone()[0]
        for dst in range(1,dests+1):
            c.execute("INSERT INTO d (destination, item_id, priority) SELECT ?, id, priority FROM sync_queue WHERE id BETWEEN ? AND ?", (dst,last-999,last))
        c.execute("COMMIT")
    el=time.perf_counter()-t
    size=os.path.getsize(path)+os.path.getsize(path+"-wal")
    c.close()
    return el,size
path="/tmp/dexp/x.db"
res={}
for rep in range(3):
    for name,schema,d in [("single",None,0)]+[(n,s,d) for n,s in SCHEMAS.items() for d in (1,2,3)]:
        el,size=run(schema,d,path)
        res.setdefault((name,d),[]).append((el,size))
base=statistics.median(e for e,_ in res[("single",0)])
bsize=statistics.median(s for _,s in res[("single",0)])
for k,v in res.items():
    e=statistics.median(x for x,_ in v); s=statistics.median(x for _,x in v)
    print(f"{k[0]:28s} dests={k[1]}: time {e*1000:7.1f} ms ({e/base:.2f}x)  file {s/1e6:.2f} MB ({s/bsize:.2f}x)")
