import sys,subprocess,re,glob
def stat(d):
    m={}; k=0
    for l in open(f'{d}/stat.txt'):
        p=l.split()
        if len(p)>=2 and (p[0].replace(',','').replace('.','').isdigit()):
            name=p[2] if p[1]=='msec' else p[1]
            if name in m: name=name+'#2'
            m[name]=float(p[0].replace(',',''))
    return m
def incl(d, funcs):
    out=subprocess.run(['perf','report','-i',f'{d}/perf.data','--children','--sort','sym','--stdio','-g','none','--percent-limit','0.05'],capture_output=True,text=True).stdout
    ec=0; r={}
    for l in out.splitlines():
        if 'Event count' in l: ec=float(l.split(':')[1])
        p=l.strip().split(None,2)
        if len(p)==3 and p[0].endswith('%'):
            name=p[2].split('] ',1)[-1]
            if name in funcs: r[name]=float(p[0][:-1])/100*ec
    return r,ec
win=4.0; rate=float(sys.argv[1]); readers=int(sys.argv[2])
funcs=['do_sendfile','sock_def_readable','__do_sys_io_uring_enter','__schedule','__x64_sys_membarrier']
print('%-22s %8s %8s %9s %8s %8s %8s %8s | %s'%('run','sends/ap','us/send','us/ap(tc)','cliwk/ap','ipi/ap','uring/ap','membar/ap',' '.join('%s us/ap'%f[:12] for f in funcs)))
for d in sys.argv[3:]:
    s=stat(d); ap=rate*win
    sends=s['syscalls:sys_enter_sendfile64']
    r,ec=incl(d,funcs)
    print('%-22s %8.1f %8.2f %9.1f %8.1f %8.1f %8.1f %8.2f | %s'%(d.split('/')[-1], sends/ap, s['task-clock']*1000/sends, s['task-clock']*1000/ap, s.get('sched:sched_waking',s.get('sched:sched_wakeup'))/ap, s['ipi:ipi_send_cpu']/ap, s.get('syscalls:sys_enter_io_uring_enter',0)/ap, s.get('syscalls:sys_enter_membarrier',0)/ap, ' '.join('%12.1f'%(r.get(f,0)/1000/ap) for f in funcs)))
