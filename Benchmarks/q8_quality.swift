// Quality of the int8-activation path and of the fp16 key/value cache (each alone and together) against --precision
// reference: KL divergence of next-token distributions (teacher-forced over real text), top-1 agreement and NLL per
// token. Built and run by Benchmarks/q8-quality.sh:
//   q8_quality MODEL.gguf MAXTOKENS FILE...   (each file tokenized as plain text, its first MAXTOKENS tokens)
import Foundation
import CausalLM
import CausalKernels

let args = CommandLine.arguments
let modelPath = args[1], maxTokens = Int(args[2])!
let files = Array(args[3...])

func logits(_ bundle: ModelBundle, _ ids: [Int]) throws -> [Float] {
    let m = bundle.model
    let cache = m.makeCache(capacity: ids.count + 1)
    return try m.forward([SequenceChunk(cache: cache, tokens: ids, logits: .all)])[0]
}

func logSoftmax(_ row: ArraySlice<Float>) -> [Double] {
    let mx = Double(row.max()!)
    let lse = mx + log(row.reduce(0.0) { $0 + exp(Double($1) - mx) })
    return row.map { Double($0) - lse }
}

let ref = try ModelBundle(path: modelPath, precision: .reference, threads: 2)
let fast = try ModelBundle(path: modelPath, precision: .fast, threads: 2)
let V = ref.model.vocabularySize
var texts: [[Int]] = []
for f in files {
    let text = try String(contentsOfFile: f, encoding: .utf8)
    texts.append(Array(try ref.tokenizer.encode(text).prefix(maxTokens)))
}
print("model \(modelPath), \(texts.map(\.count)) tokens, q8 isa \(String(cString: ck_q8_isa_name()))")
for mode in ["fp32", "int8", "fp32+kv16", "int8+kv16"] {
    var kls: [Double] = [], agree = 0, total = 0, nllRef = 0.0, nll = 0.0
    for ids in texts {
        let r = try logits(ref, ids)
        ActivationPrecision.current = mode.hasPrefix("int8") ? .int8 : .fp32
        KVPrecision.current = mode.hasSuffix("kv16") ? .fp16 : .fp32
        let x = try logits(fast, ids)
        ActivationPrecision.current = .fp32
        KVPrecision.current = .fp32
        for t in 0..<ids.count {
            let p = logSoftmax(r[(t * V)..<((t + 1) * V)]), q = logSoftmax(x[(t * V)..<((t + 1) * V)])
            var kl = 0.0
            for v in 0..<V { kl += exp(p[v]) * (p[v] - q[v]) }
            kls.append(kl)
            if p.indices.max(by: { p[$0] < p[$1] }) == q.indices.max(by: { q[$0] < q[$1] }) { agree += 1 }
            total += 1
            if t + 1 < ids.count { nllRef -= p[ids[t + 1]]; nll -= q[ids[t + 1]] }
        }
    }
    let sorted = kls.sorted()
    let n = Double(total - texts.count)
    print(String(format: "fast %@ vs reference: %d positions, KL mean %.3g, median %.3g, p99 %.3g, max %.3g; top-1 agreement %.1f%% (%d/%d); NLL/token ref %.4f, this %.4f",
                 mode, total, kls.reduce(0, +) / Double(kls.count), sorted[sorted.count / 2], sorted[Int(Double(sorted.count) * 0.99)],
                 sorted.last!, 100.0 * Double(agree) / Double(total), agree, total, nllRef / n, nll / n))
}
