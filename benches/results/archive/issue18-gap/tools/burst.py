import sys,subprocess,re,statistics as st
d=sys.argv[1]
out=subprocess.run(['perf','script','-i',f'{d}/tr.data','-F','comm,tid,cpu,time,event,trace'],capture_output=True,text=True).stdout
srv=re.compile(r'^(tailsrv|fanout-26)')
bursts=[]; cur=None; last=0
for l in out.splitlines():
    m=re.match(r'\s*(\S+)\s+(\d+)\s+\[(\d+)\]\s+([\d.]+):\s+(\S+):\s*(.*)',l)
    if not m: continue
    comm,tid,cpu,t,ev,tr=m.groups(); t=float(t)
    isrv=srv.match(comm) is not None
    if isrv and ev=='syscalls:sys_enter_sendfile64':
        if cur is None or t-last>100e-6:
            cur={'start':t,'n':0,'wk':0,'wkpos':[],'ipi':0,'threads':set(),'switch':0}; bursts.append(cur)
        cur['n']+=1; cur['end']=t; last=t; cur['threads'].add(comm)
    elif isrv and cur is not None and t-last<100e-6:
        if ev=='sched:sched_wakeup' and 'fanout-client' in tr:
            cur['wk']+=1; cur['wkpos'].append(cur['n'])
        if ev=='ipi:ipi_send_cpu': cur['ipi']+=1
        if ev=='sched:sched_switch': cur['switch']+=1
b=[x for x in bursts if x['n']>=5]
print(d, 'bursts',len(b),'sends/burst',st.mean(x['n'] for x in b))
print(' dur us median',st.median((x['end']-x['start'])*1e6 for x in b),'us/send',st.median((x['end']-x['start'])*1e6/(x['n']-1) for x in b))
print(' client wakeups/burst',st.mean(x['wk'] for x in b),'ipi/burst',st.mean(x['ipi'] for x in b),'switches in burst',st.mean(x['switch'] for x in b))
import collections
c=collections.Counter(p for x in b for p in x['wkpos'])
print(' wakeup positions (send index:count)',sorted(c.items())[:40])
print(' thread sets',collections.Counter(tuple(sorted(x['threads'])) for x in b).most_common(3))
