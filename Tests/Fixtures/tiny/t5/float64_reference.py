"""The tiny T5's logits for refs.json's inputs evaluated in float64 with numpy (an independent, straightforward
T5 forward), to measure how far fp32 results (HF's and CausalLM's) are from exact arithmetic.
    python3 float64_reference.py DIR        (DIR holds config.json, model.safetensors, refs.json; writes
                                             DIR/logits_float64.json)"""
import json, struct, numpy as np, math, sys
d=sys.argv[1].rstrip('/')+'/'
f=open(d+'model.safetensors','rb'); n=struct.unpack('<Q',f.read(8))[0]; h=json.loads(f.read(n)); base=8+n
raw=open(d+'model.safetensors','rb').read()
W={}
for k,v in h.items():
    if k=='__metadata__': continue
    b,e=v['data_offsets']; W[k]=np.frombuffer(raw[base+b:base+e],dtype=np.float32).reshape(v['shape']).astype(np.float64)
cfg=json.load(open(d+'config.json')); H=cfg['num_heads']; Dk=cfg['d_kv']; C=cfg['d_model']; eps=cfg['layer_norm_epsilon']
def bucket(rel,bi,nb=32,md=128):
    r=0
    if bi:
        nb//=2; r+= nb if rel>0 else 0; rel=abs(rel)
    else: rel=-min(rel,0)
    me=nb//2
    if rel<me: return r+rel
    return r+min(me+int(np.float32(np.log(np.float32(rel)/np.float32(me)))/np.float32(math.log(md/me))*np.float32(nb-me)), nb-1)
def ln(x,w): return w*(x/np.sqrt((x*x).mean(-1,keepdims=True)+eps))
def attn(x,kv,p,bias):
    q=(x@W[p+'q.weight'].T).reshape(len(x),H,Dk).transpose(1,0,2)
    k=(kv@W[p+'k.weight'].T).reshape(len(kv),H,Dk).transpose(1,0,2)
    v=(kv@W[p+'v.weight'].T).reshape(len(kv),H,Dk).transpose(1,0,2)
    s=q@k.transpose(0,2,1)
    if bias is not None: s=s+bias
    s=s-s.max(-1,keepdims=True); e=np.exp(s); a=e/e.sum(-1,keepdims=True)
    o=(a@v).transpose(1,0,2).reshape(len(x),H*Dk); return o@W[p+'o.weight'].T
def relbias(tab,q,k,bi):
    return np.array([[[tab[bucket(j-i,bi),hh] for j in range(k)] for i in range(q)] for hh in range(H)])
def ff(x,p): return np.maximum(x@W[p+'wi.weight'].T,0)@W[p+'wo.weight'].T
def run(inp,dec):
    x=W['shared.weight'][inp]; T=len(inp)
    b=relbias(W['encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight'],T,T,True)
    for l in range(cfg['num_layers']):
        p=f'encoder.block.{l}.layer.'
        y=ln(x,W[p+'0.layer_norm.weight']); x=x+attn(y,y,p+'0.SelfAttention.',b)
        x=x+ff(ln(x,W[p+'1.layer_norm.weight']),p+'1.DenseReluDense.')
    e=ln(x,W['encoder.final_layer_norm.weight'])
    x=W['shared.weight'][dec]; L=len(dec)
    b=relbias(W['decoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight'],L,L,False)
    b=b+np.triu(np.full((L,L),-1e30),1)[None]
    for l in range(cfg['num_decoder_layers']):
        p=f'decoder.block.{l}.layer.'
        y=ln(x,W[p+'0.layer_norm.weight']); x=x+attn(y,y,p+'0.SelfAttention.',b)
        y=ln(x,W[p+'1.layer_norm.weight']); x=x+attn(y,e,p+'1.EncDecAttention.',None)
        x=x+ff(ln(x,W[p+'2.layer_norm.weight']),p+'2.DenseReluDense.')
    x=ln(x,W['decoder.final_layer_norm.weight'])*C**-0.5
    return x@W['shared.weight'].T
r=json.load(open(d+'refs.json'))
out=[]
for i,row in enumerate(r['encoder_rows']):
    lg=run(row,r['decoder_input_ids'][i]); hf=np.array(r['logits_single'][i])
    print('row',i,'max|HF fp32 - f64|',np.abs(hf-lg).max(), 'argmax', np.unravel_index(np.abs(hf-lg).argmax(),lg.shape))
    out.append(lg.tolist())
json.dump({"decoder_input_ids": r['decoder_input_ids'], "logits_single": out}, open(d+'logits_float64.json','w'))
