import json, sys, statistics as st
# usage: python3 seedtable.py s1-log.jsonl s2-log.jsonl s3-log.jsonl > table.md
# Each finetune log's first eval (epoch 0: the base on the seed's evaluation noise) against its
# last (the fine-tuned policy on the same noise): every seed's row, mean ± sd, paired change.
M=[('ϕ Recall',lambda e:e['recall']),('ϕ Precision',lambda e:e['precision']),('ϕ FID',lambda e:e['fid']),('ϕ Coverage',lambda e:e['coverage']),
   ('ind. Recall',lambda e:e['independent']['recall']),('ind. Precision',lambda e:e['independent']['precision']),('ind. FID',lambda e:e['independent']['fid']),('ind. Coverage',lambda e:e['independent']['coverage']),
   ('pixel ratio',lambda e:e['pixel_within_class']['ratio'])]
rows=[]
for f in sys.argv[1:]:
    L=[json.loads(l) for l in open(f)]
    ev=[l for l in L if l.get('kind')=='eval']
    rows.append((f, ev[0], ev[-1]))
print('| seed | ' + ' | '.join(n for n,_ in M)+' |')
print('|'+' --- |'*(len(M)+1))
for i,(f,b,r) in enumerate(rows):
    print(f'| {i+1}: base → RL | ' + ' | '.join(f'{g(b):.3f} → {g(r):.3f}' if 'FID' not in n else f'{g(b):.2f} → {g(r):.2f}' for n,g in M)+' |')
def ms(v): return f'{st.mean(v):.3f} ± {st.stdev(v):.3f}' if len(v)>1 else f'{v[0]:.3f}'
print('| base mean ± sd | '+' | '.join(ms([g(b) for _,b,_ in rows]) for n,g in M)+' |')
print('| RL mean ± sd | '+' | '.join(ms([g(r) for _,_,r in rows]) for n,g in M)+' |')
print('| change (rose in) | '+' | '.join(f"{ms([g(r)-g(b) for _,b,r in rows])} ({sum(g(r)>g(b) for _,b,r in rows)}/{len(rows)})" for n,g in M)+' |')
print('epochs', [r['epoch'] for _,_,r in rows])
