#!/usr/bin/env python3
"""How long a rotation takes to flow down a relay tree (docs/relay.md, "Rotation flows
down the tree").

Starts an origin tailsrv, then three tiers of tailsrv-fetch, the first two each served
again by a relay tailsrv, all on this host on free ports. Once every copy equals the
origin's file, renames the origin's file away, writes a new one, and reports when each
copy first equals the new file. Usage:

    cargo build --all-features
    python3 benches/relay-rotation.py TRIALS [shorter|longer] [BIN_DIR]

`shorter` (the default) writes a new file shorter than the old one, so each fetcher waits
out its --check-timeout (3 s); `longer` writes one whose bytes differ at once.
"""
import os, subprocess, time, tempfile, shutil, sys, re
BIN = (sys.argv[3] if len(sys.argv) > 3 else 'target/debug').rstrip('/') + '/'
LONGER = len(sys.argv) > 2 and sys.argv[2] == 'longer'
def run_trial(trial):
    d=tempfile.mkdtemp(prefix='rot-relay-')
    procs=[]
    def start(args, log):
        p=subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=open(os.path.join(d,log),'w'))
        procs.append(p); return p
    def port_of(log):
        for _ in range(300):
            t=open(os.path.join(d,log)).read()
            m=re.search(r' listening .*port=(\d+)', t)
            if m: return int(m.group(1))
            time.sleep(0.05)
        raise Exception('no port in '+log)
    origin=os.path.join(d,'origin.log')
    old=b''.join(b'old line %06d ............................................\n' % i for i in range(2000))
    open(origin,'wb').write(old)
    start([BIN+'tailsrv','-p','0','--bind','127.0.0.1',origin],'origin.err')
    port=port_of('origin.err')
    copies=[]
    for tier in (1,2,3):
        copy=os.path.join(d,'copy%d.log'%tier)
        start([BIN+'tailsrv-fetch','127.0.0.1:%d'%port, copy],'fetch%d.err'%tier)
        copies.append(copy)
        if tier<3:
            # wait for the copy to exist before serving it
            start([BIN+'tailsrv','-p','0','--bind','127.0.0.1',copy],'relay%d.err'%tier)
            port=port_of('relay%d.err'%tier)
    def content(p):
        try: return open(p,'rb').read()
        except FileNotFoundError: return b''
    deadline=time.time()+30
    while any(content(c)!=old for c in copies):
        if time.time()>deadline: raise Exception('copies never caught up')
        time.sleep(0.01)
    if LONGER:
        new = b"".join(b"new line %06d %06d .....................................................\n" % (trial, i) for i in range(3000))
    else:
        new = b"new line %06d\n" % trial
    os.rename(origin, origin+'.1')
    t0=time.time()
    open(origin,'wb').write(new)
    got=[None]*3
    deadline=time.time()+60
    while None in got:
        for i,c in enumerate(copies):
            if got[i] is None and content(c)==new:
                got[i]=time.time()-t0
        if time.time()>deadline: raise Exception('new file never reached every tier: %r'%got)
        time.sleep(0.005)
    alive=all(p.poll() is None for p in procs)
    for p in procs: p.kill(); p.wait()
    shutil.rmtree(d)
    return got, alive
for trial in range(int(sys.argv[1])):
    got,alive=run_trial(trial)
    print('trial %d: copy at tier 1 %.2f s, tier 2 %.2f s, tier 3 %.2f s; every process still up: %s' % (trial, got[0], got[1], got[2], alive), flush=True)
