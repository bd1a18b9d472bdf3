import Foundation
import XCTest
import CausalLM
import CausalKernels

/// Gradient checks of every training layer against central finite differences (fp32 forward, the objective summed
/// in Double): L = Σ out · r for a fixed random r, so the analytic gradient is the layer's backward of r.
/// Then the whole tiny model, loss against parameters, with the causal, the prefix-LM and the mixed mask.
final class TrainingGradTests: XCTestCase {
    struct RNG {
        var s: UInt64
        mutating func next() -> Float {
            s = s &* 6364136223846793005 &+ 1442695040888963407
            return Float(Double(s >> 40) / Double(1 << 24)) * 2 - 1
        }
        mutating func array(_ n: Int, scale: Float = 1) -> [Float] { (0..<n).map { _ in next() * scale } }
    }

    let pool = ThreadPool(threads: 2)

    static func dot(_ a: [Float], _ b: [Float]) -> Double { zip(a, b).reduce(0) { $0 + Double($1.0) * Double($1.1) } }

    /// Compares `analytic` with central differences of `objective` over up to `samples` elements of `input`.
    /// Passes when ‖numeric − analytic‖ ≤ tol · ‖analytic‖ over the sampled elements (plus a small floor).
    func check(_ name: String, _ input: inout [Float], analytic: [Float], eps: Float = 1e-2, tol: Double = 1e-2,
               samples: Int = 48, _ objective: ([Float]) -> Double) {
        XCTAssertEqual(input.count, analytic.count, name)
        let stride = max(1, input.count / samples)
        var diff = 0.0, norm = 0.0, worst = (i: 0, num: 0.0, ana: 0.0)
        for i in Swift.stride(from: 0, to: input.count, by: stride) {
            let x = input[i]
            input[i] = x + eps; let lp = objective(input)
            input[i] = x - eps; let lm = objective(input)
            input[i] = x
            let num = (lp - lm) / (2 * Double(eps)), ana = Double(analytic[i])
            if abs(num - ana) > abs(worst.num - worst.ana) { worst = (i, num, ana) }
            diff += (num - ana) * (num - ana); norm += ana * ana
        }
        let rel = diff.squareRoot() / max(norm.squareRoot(), 1e-3)
        print(String(format: "[gradcheck] %@: relative error %.2e (worst element %d: numeric %.6f, analytic %.6f)", name, rel, worst.i, worst.num, worst.ana))
        XCTAssertLessThan(rel, tol, "\(name): worst element \(worst.i): numeric \(worst.num), analytic \(worst.ana)")
        XCTAssertGreaterThan(norm, 0, "\(name): the sampled gradient is zero")
    }

    func testLinear() {
        var rng = RNG(s: 1)
        let (n, inD, outD) = (5, 24, 20)
        var x = rng.array(n * inD), w = rng.array(outD * inD, scale: 0.5)
        let r = rng.array(n * outD)
        func f(_ x: [Float], _ w: [Float]) -> [Float] {
            var y = [Float](repeating: 0, count: n * outD)
            TrainingOps.linearForward(x: x, weight: w, rows: n, inDim: inD, outDim: outD, out: &y, pool: pool)
            return y
        }
        var dx = [Float](repeating: 0, count: n * inD), dw = [Float](repeating: 0, count: outD * inD)
        TrainingOps.linearBackward(dOut: r, x: x, weight: w, rows: n, inDim: inD, outDim: outD, dx: &dx, dWeight: &dw, pool: pool)
        let w0 = w, x0 = x
        check("linear dx", &x, analytic: dx) { Self.dot(f($0, w0), r) }
        check("linear dW", &w, analytic: dw) { Self.dot(f(x0, $0), r) }
        // The big-product path (split across threads, tails of every size) against the plain definition.
        let (M, N, K) = (67, 131, 45)
        let A = rng.array(M * K), B = rng.array(K * N)
        var C = rng.array(M * N)
        let C0 = C
        TrainingOps.gemm(M: M, N: N, K: K, A: A, aRow: K, aCol: 1, B: B, ldb: N, C: &C, ldc: N, accumulate: true, pool: pool)
        var maxErr: Float = 0
        for i in 0..<M { for j in 0..<N {
            var s = Double(C0[i * N + j])
            for k in 0..<K { s += Double(A[i * K + k]) * Double(B[k * N + j]) }
            maxErr = max(maxErr, abs(Float(s) - C[i * N + j]))
        } }
        XCTAssertLessThan(maxErr, 1e-4)
    }

    func testRMSNorm() {
        var rng = RNG(s: 2)
        let (n, C) = (4, 32)
        var x = rng.array(n * C), w = rng.array(C).map { 1 + 0.3 * $0 }
        let r = rng.array(n * C)
        func f(_ x: [Float], _ w: [Float]) -> [Float] {
            var y = [Float](repeating: 0, count: n * C), rstd = [Float](repeating: 0, count: n)
            TrainingOps.rmsnormForward(x: x, weight: w, out: &y, rstd: &rstd, rows: n, dim: C, eps: 1e-5)
            return y
        }
        var y = [Float](repeating: 0, count: n * C), rstd = [Float](repeating: 0, count: n)
        TrainingOps.rmsnormForward(x: x, weight: w, out: &y, rstd: &rstd, rows: n, dim: C, eps: 1e-5)
        var dx = [Float](repeating: 0, count: n * C), dw = [Float](repeating: 0, count: C)
        TrainingOps.rmsnormBackward(dOut: r, x: x, weight: w, rstd: rstd, dx: &dx, dWeight: &dw, rows: n, dim: C)
        let w0 = w, x0 = x
        check("rmsnorm dx", &x, analytic: dx, eps: 1e-3) { Self.dot(f($0, w0), r) }
        check("rmsnorm dW", &w, analytic: dw, eps: 1e-3) { Self.dot(f(x0, $0), r) }
    }

    func testRoPE() {
        var rng = RNG(s: 3)
        let (n, H, D) = (6, 3, 8)
        var x = rng.array(n * H * D)
        let r = rng.array(n * H * D)
        let t = TrainingOps.ropeTables(positions: [0, 1, 2, 7, 0, 40], ropeDim: D, theta: 10000)
        let negSin = t.sin.map { -$0 }
        func f(_ x: [Float]) -> [Float] {
            var y = x
            TrainingOps.ropeForward(&y, rows: n, heads: H, headDim: D, ropeDim: D, cos: t.cos, sin: t.sin)
            return y
        }
        var dx = r
        TrainingOps.ropeBackward(&dx, rows: n, heads: H, headDim: D, ropeDim: D, cos: t.cos, negSin: negSin)
        check("rope dx", &x, analytic: dx) { Self.dot(f($0), r) }
    }

    /// Whether query i of head h may read key j under `mask` (P: the prompt's length): the masks' definitions,
    /// written out independently of the kernels.
    static func allowed(_ mask: AttentionMask, i: Int, j: Int, h: Int, heads: Int, P: Int) -> Bool {
        switch mask {
        case .causal: return j <= i
        case .prefix: return i < P ? j < P : j <= i
        case .mixed: return h < heads / 2 || i >= P ? j <= i : (i <= j && j < P)
        case .bidirectional: return true
        }
    }

    /// Attention forward and backward against softmax attention written out in Double over exactly the keys each mask
    /// allows, for head dimensions that take the per-pair path (8) and the blocked one (16, 64, 80: several 64-key
    /// score tiles, 4-row blocks with ragged tails, sequences longer than one 64-row backward tile); central
    /// differences as well on the small shapes.
    func testAttention() {
        let shapes: [(D: Int, spans: [SequenceSpan], fd: Bool)] = [
            (8, [SequenceSpan(start: 0, length: 5, prefix: 3), SequenceSpan(start: 5, length: 4, prefix: 2)], true),
            (16, [SequenceSpan(start: 0, length: 7, prefix: 3), SequenceSpan(start: 7, length: 6, prefix: 5)], true),
            (64, [SequenceSpan(start: 0, length: 70, prefix: 21), SequenceSpan(start: 70, length: 3, prefix: 1)], false),
            (80, [SequenceSpan(start: 0, length: 133, prefix: 67), SequenceSpan(start: 133, length: 17, prefix: 16)], false),
        ]
        for shape in shapes {
            for mask in AttentionMask.allCases {
                checkAttention(D: shape.D, spans: shape.spans, mask: mask, finiteDifferences: shape.fd)
            }
        }
    }

    func checkAttention(D: Int, spans: [SequenceSpan], mask: AttentionMask, finiteDifferences: Bool) {
        var rng = RNG(s: UInt64(4 + D))
        let (H, Hkv) = (4, 2)
        let n = spans.map { $0.start + $0.length }.max()!
        let tag = "\(mask), D \(D), lengths \(spans.map(\.length))"
        var q = rng.array(n * H * D), k = rng.array(n * Hkv * D), v = rng.array(n * Hkv * D)
        let r = rng.array(n * H * D)
        func f(_ q: [Float], _ k: [Float], _ v: [Float]) -> [Float] {
            var out = [Float](repeating: 0, count: n * H * D), lse = [Float](repeating: 0, count: n * H)
            TrainingOps.attentionForward(q: q, k: k, v: v, sequences: spans, mask: mask, heads: H, kvHeads: Hkv, headDim: D,
                                         out: &out, lse: &lse, pool: pool)
            return out
        }
        var out = [Float](repeating: 0, count: n * H * D), lse = [Float](repeating: 0, count: n * H)
        TrainingOps.attentionForward(q: q, k: k, v: v, sequences: spans, mask: mask, heads: H, kvHeads: Hkv, headDim: D,
                                     out: &out, lse: &lse, pool: pool)
        var dq = [Float](repeating: 0, count: n * H * D), dk = [Float](repeating: 0, count: n * Hkv * D), dv = dk
        TrainingOps.attentionBackward(q: q, k: k, v: v, out: out, lse: lse, dOut: r, sequences: spans, mask: mask, heads: H,
                                      kvHeads: Hkv, headDim: D, dq: &dq, dk: &dk, dv: &dv, pool: pool)
        if finiteDifferences {
            let (q0, k0, v0) = (q, k, v)
            check("attention dq (\(tag))", &q, analytic: dq) { Self.dot(f($0, k0, v0), r) }
            check("attention dk (\(tag))", &k, analytic: dk) { Self.dot(f(q0, $0, v0), r) }
            check("attention dv (\(tag))", &v, analytic: dv) { Self.dot(f(q0, k0, $0), r) }
        }
        // Forward and backward in Double over exactly the allowed keys.
        let (qDim, kvDim) = (H * D, Hkv * D)
        let scale = 1 / Double(D).squareRoot()
        var refQ = [Double](repeating: 0, count: n * qDim), refK = [Double](repeating: 0, count: n * kvDim), refV = refK
        var worstOut = 0.0, maxOut = 0.0
        for s in spans {
            for i in 0..<s.length {
                for h in 0..<H {
                    let g = h / (H / Hkv)
                    let qi = (s.start + i) * qDim + h * D
                    let keys = (0..<s.length).filter { Self.allowed(mask, i: i, j: $0, h: h, heads: H, P: s.prefix) }
                    let scores = keys.map { j in
                        (0..<D).reduce(0.0) { $0 + Double(q[qi + $1]) * Double(k[(s.start + j) * kvDim + g * D + $1]) } * scale
                    }
                    let mx = scores.max()!
                    let e = scores.map { exp($0 - mx) }, sum = e.reduce(0, +)
                    let p = e.map { $0 / sum }
                    var o = [Double](repeating: 0, count: D)
                    for (t, j) in keys.enumerated() {
                        for d in 0..<D { o[d] += p[t] * Double(v[(s.start + j) * kvDim + g * D + d]) }
                    }
                    for d in 0..<D {
                        worstOut = max(worstOut, abs(o[d] - Double(out[qi + d])))
                        maxOut = max(maxOut, abs(o[d]))
                    }
                    XCTAssertEqual(Double(lse[(s.start + i) * H + h]), mx + log(sum), accuracy: 1e-5 * max(1, abs(mx + log(sum))),
                                   "\(tag): lse row \(i) head \(h)")
                    // dP_j = r_i · v_j; dS_j = P_j (dP_j − Σ_t P_t dP_t); dq_i = scale Σ dS_j k_j, dk_j += scale dS_j q_i, dv_j += P_j r_i.
                    let dp = keys.map { j in (0..<D).reduce(0.0) { $0 + Double(r[qi + $1]) * Double(v[(s.start + j) * kvDim + g * D + $1]) } }
                    let di = zip(p, dp).reduce(0.0) { $0 + $1.0 * $1.1 }
                    for (t, j) in keys.enumerated() {
                        let ds = p[t] * (dp[t] - di) * scale, kj = (s.start + j) * kvDim + g * D
                        for d in 0..<D {
                            refQ[qi + d] += ds * Double(k[kj + d])
                            refK[kj + d] += ds * Double(q[qi + d])
                            refV[kj + d] += p[t] * Double(r[qi + d])
                        }
                    }
                }
            }
        }
        XCTAssertLessThan(worstOut, 2e-6 * max(maxOut, 1), "\(tag): attention output against the Double reference")
        for (name, got, ref) in [("dq", dq, refQ), ("dk", dk, refK), ("dv", dv, refV)] {
            let scaleRef = ref.map(abs).max()!
            let worst = zip(got, ref).map { abs(Double($0) - $1) }.max()!
            XCTAssertGreaterThan(scaleRef, 0, "\(tag): \(name) reference is zero")
            XCTAssertLessThan(worst, 2e-6 * scaleRef, "\(tag): \(name) against the Double reference (max |ref| \(scaleRef))")
        }
    }

    func testSwiGLU() {
        var rng = RNG(s: 5)
        let n = 40
        var g = rng.array(n, scale: 3), u = rng.array(n)
        let r = rng.array(n)
        func f(_ g: [Float], _ u: [Float]) -> [Float] {
            var h = [Float](repeating: 0, count: n)
            TrainingOps.swigluForward(gate: g, up: u, out: &h, count: n, pool: pool)
            return h
        }
        var dg = [Float](repeating: 0, count: n), du = dg
        TrainingOps.swigluBackward(dOut: r, gate: g, up: u, dGate: &dg, dUp: &du, count: n, pool: pool)
        let g0 = g, u0 = u
        check("swiglu dgate", &g, analytic: dg, eps: 1e-3) { Self.dot(f($0, u0), r) }
        check("swiglu dup", &u, analytic: du, eps: 1e-3) { Self.dot(f(g0, $0), r) }
    }

    func testEmbeddingAndCrossEntropy() {
        var rng = RNG(s: 6)
        let (V, C) = (11, 6)
        let tokens = [3, 7, 3, 0, 10]
        var table = rng.array(V * C)
        let r = rng.array(tokens.count * C)
        func f(_ t: [Float]) -> [Float] {
            var out = [Float](repeating: 0, count: tokens.count * C)
            TrainingOps.embeddingForward(tokens: tokens, table: t, dim: C, out: &out)
            return out
        }
        var dt = [Float](repeating: 0, count: V * C)
        TrainingOps.embeddingBackward(tokens: tokens, dOut: r, dim: C, dTable: &dt)
        check("embedding dtable", &table, analytic: dt, samples: V * C) { Self.dot(f($0), r) }
        var dtPad = [Float](repeating: 0, count: V * C)
        TrainingOps.embeddingBackward(tokens: tokens, dOut: r, dim: C, dTable: &dtPad, paddingID: 3)
        XCTAssertTrue(dtPad[(3 * C)..<(4 * C)].allSatisfy { $0 == 0 })
        XCTAssertEqual(Array(dtPad[(7 * C)..<(8 * C)]), Array(dt[(7 * C)..<(8 * C)]))

        // Cross-entropy: loss · scale against the logits.
        let rows = 3
        var logits = rng.array(rows * V, scale: 4)
        let targets = [2, 0, 10]
        let scale: Float = 0.25
        func loss(_ z: [Float]) -> Double {
            var zz = z
            return TrainingOps.crossEntropy(logits: &zz, rows: rows, vocab: V, targets: targets, scale: 1, pool: pool).reduce(0, +) * Double(scale)
        }
        var grad = logits
        let l = TrainingOps.crossEntropy(logits: &grad, rows: rows, vocab: V, targets: targets, scale: scale, pool: pool)
        XCTAssertEqual(l.count, rows)
        for r in 0..<rows { XCTAssertEqual(grad[(r * V)..<((r + 1) * V)].reduce(0, +), 0, accuracy: 1e-6) }
        check("cross-entropy dlogits", &logits, analytic: grad, eps: 1e-3, samples: rows * V, loss)
    }

    /// A tiny random LLaMA (GQA, untied head) and a ragged batch: d(summed loss)/d(parameter) for samples of every tensor.
    func testWholeModel() throws {
        for (mask, tied) in [(AttentionMask.causal, false), (.prefix, true), (.mixed, false)] {
            let cfg = LlamaConfig(vocabularySize: 29, hiddenSize: 16, intermediateSize: 24, layerCount: 2, headCount: 4,
                                  kvHeadCount: 2, ropeTheta: 10000, rmsNormEps: 1e-5, contextLength: 64)
            let p = LlamaParameters(config: cfg, tiedEmbeddings: tied)
            var rng = RNG(s: 7)
            for t in p.tensors {
                let v = p.values(t)
                for i in 0..<v.count { v[i] = t.decays ? rng.next() * 0.5 : 1 + 0.2 * rng.next() }
            }
            let batch = [SFTExample(tokens: [1, 5, 9, 3, 22, 7], labels: [-100, -100, -100, 3, 22, 7], promptLength: 3),
                         SFTExample(tokens: [4, 4, 28, 0], labels: [-100, 4, 28, 0], promptLength: 2)]
            let trainer = LlamaTrainer(parameters: p, attention: mask, pool: pool)
            let loss = try trainer.forwardBackward(batch, lossScale: 1)   // gradient of the summed loss
            XCTAssertEqual(loss.scoredTokens, 6)
            XCTAssertEqual(try trainer.loss(batch).sumLoss, loss.sumLoss, accuracy: 1e-9)
            for t in p.tensors {
                var values = Array(p.values(t))
                let analytic = Array(trainer.parameterGradients!.values(t))
                check("model \(mask) tied=\(tied) \(t.name)", &values, analytic: analytic, eps: 1e-2, tol: 2e-2, samples: 16) { vals in
                    let dst = p.values(t)
                    let saved = Array(dst)
                    for i in 0..<vals.count { dst[i] = vals[i] }
                    defer { for i in 0..<saved.count { dst[i] = saved[i] } }
                    return try! trainer.loss(batch).sumLoss
                }
            }
        }
    }

    /// Prefix-LM lets prompt tokens see later prompt tokens, never the response; causal never looks ahead.
    func testPrefixMaskChangesOnlyWhatItShould() throws {
        let cfg = LlamaConfig(vocabularySize: 29, hiddenSize: 16, intermediateSize: 24, layerCount: 1, headCount: 2,
                              kvHeadCount: 1, rmsNormEps: 1e-5, contextLength: 64)
        let p = LlamaParameters(config: cfg, tiedEmbeddings: false)
        var rng = RNG(s: 9)
        for t in p.tensors { let v = p.values(t); for i in 0..<v.count { v[i] = t.decays ? rng.next() : 1 } }
        let trainer = LlamaTrainer(parameters: p, attention: .prefix, pool: pool)
        // Changing a response token must not change the loss of predicting that token (position before it).
        let a = SFTExample(tokens: [1, 2, 3, 4, 5], labels: [-100, -100, -100, 4, -100], promptLength: 3)
        var b = a; b.tokens[4] = 20
        XCTAssertEqual(try trainer.loss([a]).sumLoss, try trainer.loss([b]).sumLoss)
        // Position 0 predicting token 1: with the prefix mask it sees the whole prompt (token 2 too), causally it does not.
        let c = SFTExample(tokens: [1, 2, 3, 4], labels: [-100, 2, -100, -100], promptLength: 3)
        var d = c; d.tokens[2] = 9
        XCTAssertNotEqual(try trainer.loss([c]).sumLoss, try trainer.loss([d]).sumLoss)
        let causal = LlamaTrainer(parameters: p, attention: .causal, pool: pool)
        XCTAssertEqual(try causal.loss([c]).sumLoss, try causal.loss([d]).sumLoss)
        // ... and ragged batches keep sequences apart.
        let both = try trainer.loss([a, c])
        XCTAssertEqual(both.sequences[0].sumLoss, try trainer.loss([a]).sumLoss, accuracy: 1e-6)
        XCTAssertEqual(both.sequences[1].sumLoss, try trainer.loss([c]).sumLoss, accuracy: 1e-6)
    }

    /// No scored token's loss depends on its own input token or any later one, for every mask that trains a causal LM:
    /// for each response position t (scored alone: position t - 1 predicts token t), replacing the input token at any
    /// u >= t (labels kept) leaves the loss bit-identical. With the prompt scored instead, mixed sees later prompt
    /// tokens where causal does not, and bidirectional is refused.
    func testMasksNeverLeakTheResponse() throws {
        let cfg = LlamaConfig(vocabularySize: 29, hiddenSize: 16, intermediateSize: 24, layerCount: 2, headCount: 4,
                              kvHeadCount: 2, rmsNormEps: 1e-5, contextLength: 64)
        let p = LlamaParameters(config: cfg, tiedEmbeddings: false)
        var rng = RNG(s: 11)
        for t in p.tensors { let v = p.values(t); for i in 0..<v.count { v[i] = t.decays ? rng.next() : 1 + 0.2 * rng.next() } }
        let tokens = [1, 5, 9, 3, 22, 7, 14, 2], P = 4
        for mask in [AttentionMask.causal, .prefix, .mixed] {
            let trainer = LlamaTrainer(parameters: p, attention: mask, pool: pool)
            for t in P..<tokens.count {
                var labels = [Int](repeating: ignoredLabel, count: tokens.count)
                labels[t] = tokens[t]
                let base = SFTExample(tokens: tokens, labels: labels, promptLength: P)
                let l0 = try trainer.loss([base])
                XCTAssertEqual(l0.scoredTokens, 1)
                XCTAssertGreaterThan(l0.sumLoss, 0)
                for u in t..<tokens.count {
                    var ex = base
                    ex.tokens[u] = (tokens[u] + 11) % cfg.vocabularySize
                    XCTAssertEqual(try trainer.loss([ex]).sumLoss, l0.sumLoss, "\(mask): the loss of token \(t) changed with token \(u)")
                }
                // An earlier token does change it (the probe is sensitive).
                var earlier = base
                earlier.tokens[t - 1] = (tokens[t - 1] + 11) % cfg.vocabularySize
                XCTAssertNotEqual(try trainer.loss([earlier]).sumLoss, l0.sumLoss, "\(mask): token \(t) ignores token \(t - 1)")
            }
        }
        // Inside the prompt: position 0 predicting token 1. Mixed's backward heads read the prompt ahead (token 2),
        // causal does not; position P - 1's forward-reading heads are causal in mixed but read nothing new in prefix.
        var labels = [Int](repeating: ignoredLabel, count: tokens.count)
        labels[1] = tokens[1]
        let c = SFTExample(tokens: tokens, labels: labels, promptLength: P)
        var d = c; d.tokens[2] = 20
        let mixed = LlamaTrainer(parameters: p, attention: .mixed, pool: pool)
        let causal = LlamaTrainer(parameters: p, attention: .causal, pool: pool)
        XCTAssertNotEqual(try mixed.loss([c]).sumLoss, try mixed.loss([d]).sumLoss)
        XCTAssertEqual(try causal.loss([c]).sumLoss, try causal.loss([d]).sumLoss)
        XCTAssertNotEqual(try mixed.loss([c]).sumLoss, try causal.loss([c]).sumLoss)
        // A response token's loss under mixed differs from causal's (the prompt was read differently) and from prefix's.
        var rl = [Int](repeating: ignoredLabel, count: tokens.count)
        rl[P + 1] = tokens[P + 1]
        let e = SFTExample(tokens: tokens, labels: rl, promptLength: P)
        let prefix = LlamaTrainer(parameters: p, attention: .prefix, pool: pool)
        let (lm, lc, lp) = (try mixed.loss([e]).sumLoss, try causal.loss([e]).sumLoss, try prefix.loss([e]).sumLoss)
        XCTAssertNotEqual(lm, lc)
        XCTAssertNotEqual(lm, lp)
        // Bidirectional attention cannot score a causal LM.
        let bi = LlamaTrainer(parameters: p, attention: .bidirectional, pool: pool)
        XCTAssertThrowsError(try bi.loss([c])) { XCTAssertTrue("\($0)".contains("bidirectional"), "\($0)") }
        XCTAssertThrowsError(try bi.forwardBackward([c]))
    }
}
