# Paired changes of the cells of `divrl experiment diversity` over seeds 1-3, against any cell kind:
# python3 paired_vs_plain.py . plain base rl  (rows per seed, then base/rl vs plain and rl vs base);
# an argument A:B adds the change from cell kind A to B (e.g. rl:rl2x, plain:rl2x).
import json,sys,statistics as st
D=sys.argv[1]; seeds=[1,2,3]
M=[('ϕR',lambda r:r['recall']),('ϕP',lambda r:r['precision']),('ϕFID',lambda r:r['fid']),('ϕC',lambda r:r['coverage']),
   ('iR',lambda r:r['independent']['recall']),('iP',lambda r:r['independent']['precision']),('iFID',lambda r:r['independent']['fid']),('iC',lambda r:r['independent']['coverage']),('pix',lambda r:r['pixel_within_class']['ratio'])]
def rep(n): return json.load(open(f'{D}/cells/{n}.json'))['report']
args=sys.argv[2:]
cells=[a for a in args if ':' not in a] or ['plain','base','rl']
extra=[tuple(a.split(':')) for a in args if ':' in a]
for s in seeds:
  for c in cells:
    try: r=rep(f'{c}-s{s}')
    except Exception: continue
    print(f's{s} {c:6}',' '.join(f'{k} {f(r):.4f}' for k,f in M))
def ch(a,b):
  out=[]
  for k,f in M:
    d=[f(rep(f'{b}-s{s}'))-f(rep(f'{a}-s{s}')) for s in seeds]
    out.append(f'{k} {st.mean(d):+.4f}±{st.stdev(d):.4f} ({sum(x>0 for x in d)}/3)')
  return ' | '.join(out)
for a,b in [('plain','base'),('plain','rl'),('base','rl')]+extra:
  try: print(f'{b} vs {a}:',ch(a,b))
  except Exception as e: print(a,b,'n/a',e)
