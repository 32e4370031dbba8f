import sys,subprocess
def load(d):
    out=subprocess.run(['perf','report','-i',f'{d}/perf.data','--children','--sort','sym','--stdio','-g','none','--percent-limit','0.02'],capture_output=True,text=True).stdout
    ec=0; r={}; selfu=0
    for l in out.splitlines():
        if 'Event count' in l: ec=float(l.split(':')[1])
        p=l.strip().split(None,3)
        if len(p)==4 and p[0].endswith('%'):
            r[p[3]]=float(p[0][:-1])/100*ec
            if p[2]=='[.]': selfu+=float(p[1][:-1])/100*ec
    return r,ec,selfu
ap=4000
for d in sys.argv[1:]:
    r,ec,su=load(d)
    keys=[k for k in r if k.startswith('__x64_sys_') or k.startswith('asm_sysvec') or k in ('do_sendfile','ret_from_fork_asm','asm_common_interrupt','irq_exit_rcu','__schedule','handle_softirqs')]
    print(d, 'total us/ap %.1f user-self us/ap %.1f'%(ec/1000/ap, su/1000/ap))
    for k in sorted(keys,key=lambda k:-r[k])[:14]: print('   %7.1f %s'%(r[k]/1000/ap,k))
