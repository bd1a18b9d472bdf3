import Foundation
import XCTest
import CausalLM
import CausalKernels

/// Gradient checks of every training layer against central finite differences (fp32 forward, the objective summed
/// in Double): L = Σ out · r for a fixed random r, so the analytic gradient is the layer's backward of r.
/// Then the whole tiny model, loss against parameters, with the causal and the prefix-LM mask.
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

    func testAttention() {
        for prefix in [0, 3] {
            var rng = RNG(s: 4)
            let (H, Hkv, D) = (4, 2, 8)
            let spans = [SequenceSpan(start: 0, length: 5, prefix: prefix), SequenceSpan(start: 5, length: 4, prefix: prefix)]
            let n = 9
            var q = rng.array(n * H * D), k = rng.array(n * Hkv * D), v = rng.array(n * Hkv * D)
            let r = rng.array(n * H * D)
            func f(_ q: [Float], _ k: [Float], _ v: [Float]) -> [Float] {
                var out = [Float](repeating: 0, count: n * H * D), lse = [Float](repeating: 0, count: n * H)
                TrainingOps.attentionForward(q: q, k: k, v: v, sequences: spans, heads: H, kvHeads: Hkv, headDim: D, out: &out, lse: &lse, pool: pool)
                return out
            }
            var out = [Float](repeating: 0, count: n * H * D), lse = [Float](repeating: 0, count: n * H)
            TrainingOps.attentionForward(q: q, k: k, v: v, sequences: spans, heads: H, kvHeads: Hkv, headDim: D, out: &out, lse: &lse, pool: pool)
            var dq = [Float](repeating: 0, count: n * H * D), dk = [Float](repeating: 0, count: n * Hkv * D), dv = dk
            TrainingOps.attentionBackward(q: q, k: k, v: v, out: out, lse: lse, dOut: r, sequences: spans, heads: H, kvHeads: Hkv,
                                          headDim: D, dq: &dq, dk: &dk, dv: &dv, pool: pool)
            let (q0, k0, v0) = (q, k, v)
            check("attention dq (prefix \(prefix))", &q, analytic: dq) { Self.dot(f($0, k0, v0), r) }
            check("attention dk (prefix \(prefix))", &k, analytic: dk) { Self.dot(f(q0, $0, v0), r) }
            check("attention dv (prefix \(prefix))", &v, analytic: dv) { Self.dot(f(q0, k0, $0), r) }
            // The first row of a sequence sees only itself (causal) or the whole prefix.
            let qDim = H * D
            if prefix == 0 {
                for h in 0..<H { for d in 0..<D { XCTAssertEqual(out[h * D + d], v[(h / 2) * D + d], accuracy: 1e-6) } }
            } else {
                XCTAssertNotEqual(out[0], v[0])
                _ = qDim
            }
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
        for (mask, tied) in [(AttentionMask.causal, false), (.prefix, true)] {
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
                let analytic = Array(trainer.gradients.values(t))
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
}
