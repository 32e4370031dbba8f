import sys,subprocess
def load(d):
    out=subprocess.run(['perf','report','-i',f'/tmp/gap/{d}/perf.data','--children','--sort','sym','--stdio','-g','none','--percent-limit','0.05'],capture_output=True,text=True).stdout
    tot=subprocess.run(['perf','report','-i',f'/tmp/gap/{d}/perf.data','--stdio','--sort','sym','-g','none'],capture_output=True,text=True).stdout
    n=0
    for l in tot.splitlines():
        if 'Event count' in l: n=float(l.split(':')[1])
    m={}
    for l in out.splitlines():
        l=l.strip()
        if not l or l[0]=='#': continue
        p=l.split(None,2)
        if len(p)<3 or not p[0].endswith('%'): continue
        m[p[2]]=float(p[0][:-1])/100
    return m,n
def sends(d):
    for l in open(f'/tmp/gap/{d}/stat.txt'):
        if 'sendfile64' in l: return int(l.split()[0].replace(',',''))
a,b=sys.argv[1],sys.argv[2]; period=float(sys.argv[3])
(ma,na),(mb,nb)=load(a),load(b); sa,sb=sends(a),sends(b)
print('samples',na,nb)
r={k:v*na/sa for k,v in ma.items()}; t={k:v*nb/sb for k,v in mb.items()}
for k in sys.argv[4].split(','):
    ka=[x for x in set(r)|set(t) if x.endswith('] '+k)]
    for x in ka: print('%7.0f %7.0f %+7.0f  %s'%(r.get(x,0),t.get(x,0),t.get(x,0)-r.get(x,0),x))
