"""The module import graph of src/, from its `use` lines and inline `crate::`/`super::`
paths (test modules left out): prints every cycle and exits 1 if there is one, so lower
layers never come to import upper ones. Usage: python3 .ci/module-cycles.py [src]"""
import re,os,sys,glob
root=sys.argv[1] if len(sys.argv)>1 else 'src'
mods={}
for p in glob.glob(f'{root}/**/*.rs', recursive=True):
    rel=os.path.relpath(p,root)[:-3]
    parts=rel.split('/')
    if parts[-1] in ('mod','lib','main'): parts=parts[:-1]
    if rel=='main': continue
    mods['::'.join(parts)]=p
def strip_tests(s):
    m=re.search(r'^#\[cfg\(test\)\]\s*\nmod tests \{', s, re.M)
    return s[:m.start()] if m else s
def resolve(cur, path):
    segs=path.split('::')
    if segs[0]=='crate': base=[]; segs=segs[1:]
    elif segs[0]=='super':
        base=cur.split('::') if cur else []
        while segs and segs[0]=='super':
            base=base[:-1]; segs=segs[1:]
    elif segs[0]=='self': base=cur.split('::') if cur else []; segs=segs[1:]
    else: return None
    best=None
    for k in range(len(segs),-1,-1):
        cand='::'.join(base+segs[:k])
        if cand in mods: best=cand; break
    return best
edges={m:set() for m in mods}
for m,p in mods.items():
    if p.endswith('tests.rs') and m.endswith('tests'): continue
    s=strip_tests(open(p).read())
    for path in re.findall(r'\b((?:crate|super|self)(?:::[A-Za-z_][A-Za-z0-9_]*)+)', s):
        t=resolve(m,path)
        if t is not None and t != m:
            edges[m].add(t)
    # `use x::{a, b}` groups under crate/super: expand braces roughly
    for base,inner in re.findall(r'\b((?:crate|super)(?:::[A-Za-z_]\w*)*)::\{([^}]*)\}', s):
        for item in inner.split(','):
            item=item.strip().split(' as ')[0].strip()
            if not item or item=='self': continue
            t=resolve(m, base+'::'+item.split('::')[0])
            if t and t!=m: edges[m].add(t)
# Tarjan
idx={};low={};st=[];on=set();sccs=[];c=[0]
sys.setrecursionlimit(10000)
def sc(v):
    idx[v]=low[v]=c[0];c[0]+=1;st.append(v);on.add(v)
    for w in edges[v]:
        if w not in idx: sc(w); low[v]=min(low[v],low[w])
        elif w in on: low[v]=min(low[v],idx[w])
    if low[v]==idx[v]:
        comp=[]
        while True:
            w=st.pop();on.discard(w);comp.append(w)
            if w==v: break
        sccs.append(comp)
for v in edges:
    if v not in idx: sc(v)
bad=[s for s in sccs if len(s)>1]
for s in bad:
    print('cycle:', ' '.join(sorted(s)))
    for a in s:
        print('   ',a,'->',sorted(e for e in edges[a] if e in s))
print(f"{len(mods)} modules, {sum(len(e) for e in edges.values())} edges, {len(bad)} cycles")
sys.exit(1 if bad else 0)
