import XCTest
import CCausalKernels

/// The row-wise C operations against plain Double-precision twins written from the formulas.
final class OpsTests: XCTestCase {
    /// Seeded (SplitMix64, MatMulTests.swift), and XCTest makes a fresh instance per test, so each test sees the
    /// same numbers whatever runs before it and a failure reproduces.
    var rng = SplitMix64(seed: 18)
    func randoms(_ n: Int, _ scale: Float = 1) -> [Float] { (0..<n).map { _ in Float.random(in: -scale...scale, using: &rng) } }

    func testRMSNorm() {
        let n = 576
        let x = randoms(n, 3), w = randoms(n)
        var y = [Float](repeating: 0, count: n)
        ck_rmsnorm(x, w, &y, Int64(n), 1e-5)
        let ms = x.reduce(0.0) { $0 + Double($1) * Double($1) } / Double(n)
        let inv = 1 / (ms + 1e-5).squareRoot()
        for i in 0..<n { XCTAssertEqual(Double(y[i]), Double(w[i]) * Double(x[i]) * inv, accuracy: 1e-5) }
    }

    func testRoPEAdjacentAndHalfAreTheSameRotationUnderPermutation() {
        let H = 3, D = 8, half = D / 2
        let angles = (0..<half).map { Float($0 + 1) * 0.3 }
        let c = angles.map { cosf($0) }, s = angles.map { sinf($0) }
        let v = randoms(H * D)
        var adj = v
        ck_rope_adjacent(&adj, Int64(H), Int64(D), Int64(D), c, s)
        // Rotate-half on the permuted layout (pairs (i, i+D/2)) gives the same pairs rotated.
        var perm = [Float](repeating: 0, count: H * D)
        for h in 0..<H { for i in 0..<half { perm[h * D + i] = v[h * D + 2 * i]; perm[h * D + i + half] = v[h * D + 2 * i + 1] } }
        ck_rope_half(&perm, Int64(H), Int64(D), Int64(D), c, s)
        for h in 0..<H {
            for i in 0..<half {
                XCTAssertEqual(adj[h * D + 2 * i], perm[h * D + i], accuracy: 1e-6)
                XCTAssertEqual(adj[h * D + 2 * i + 1], perm[h * D + i + half], accuracy: 1e-6)
                // And it is a rotation by angles[i].
                let a = Double(v[h * D + 2 * i]), b = Double(v[h * D + 2 * i + 1]), t = Double(angles[i])
                XCTAssertEqual(Double(adj[h * D + 2 * i]), a * cos(t) - b * sin(t), accuracy: 1e-5)
                XCTAssertEqual(Double(adj[h * D + 2 * i + 1]), a * sin(t) + b * cos(t), accuracy: 1e-5)
            }
        }
    }

    func testAttentionRowAgainstNaive() {
        let H = 6, Hkv = 2, D = 16, npos = 37, stride = Hkv * D
        let q = randoms(H * D), K = randoms(npos * stride), V = randoms(npos * stride)
        var out = [Float](repeating: 0, count: H * D)
        var scratch = [Float](repeating: 0, count: npos * H)
        let scale = 1 / Float(D).squareRoot()
        ck_attention_row(q, K, V, Int64(stride), Int64(D), Int64(npos), Int64(H), Int64(Hkv), Int64(D), scale, &out, &scratch, 0, Int64(H))
        for h in 0..<H {
            let g = h / (H / Hkv)
            var scores = (0..<npos).map { j in (0..<D).reduce(0.0) { $0 + Double(q[h * D + $1]) * Double(K[j * stride + g * D + $1]) } * Double(scale) }
            let m = scores.max()!
            scores = scores.map { exp($0 - m) }
            let z = scores.reduce(0, +)
            for d in 0..<D {
                let want = (0..<npos).reduce(0.0) { $0 + scores[$1] / z * Double(V[$1 * stride + g * D + d]) }
                XCTAssertEqual(Double(out[h * D + d]), want, accuracy: 1e-5, "head \(h) dim \(d)")
            }
        }
    }

    /// The AVX-512 attention gives the same bits as the portable one, at every length, in the position-major and
    /// the head-major key/value layouts, and a head's result does not depend on which heads share its call (one per
    /// call, a whole key/value group, all heads, odd ranges).
    func testAttentionSameBitsOnEveryISALevelLayoutAndHeadRange() throws {
        let H = 9, Hkv = 3, D = 64, stride = Hkv * D
        for npos in [1, 2, 3, 15, 16, 17, 31, 32, 33, 100, 203] {
            let q = randoms(H * D), K = randoms(npos * stride, 2), V = randoms(npos * stride)
            // The same keys/values head-major, in a cache of capacity npos + 5: (Hkv, capacity, D).
            let cap = npos + 5
            var Kh = [Float](repeating: .nan, count: Hkv * cap * D), Vh = Kh
            for j in 0..<npos { for g in 0..<Hkv { for d in 0..<D {
                Kh[g * cap * D + j * D + d] = K[j * stride + g * D + d]
                Vh[g * cap * D + j * D + d] = V[j * stride + g * D + d]
            } } }
            var outs: [[Float]] = []
            for level in ISALevels.available.reversed() {
                guard ISALevels.force(level) else { continue }
                for headMajor in [false, true] {
                    for ranges in [[0..<H], (0..<H).map { $0..<($0 + 1) }, [0..<3, 3..<6, 6..<9], [0..<2, 2..<7, 7..<9]] {
                        var out = [Float](repeating: 0, count: H * D)
                        for r in ranges {
                            var scratch = [Float](repeating: .nan, count: npos * r.count)
                            if headMajor {
                                ck_attention_row(q, Kh, Vh, Int64(D), Int64(cap * D), Int64(npos), Int64(H), Int64(Hkv), Int64(D),
                                                 0.125, &out, &scratch, Int64(r.lowerBound), Int64(r.upperBound))
                            } else {
                                ck_attention_row(q, K, V, Int64(stride), Int64(D), Int64(npos), Int64(H), Int64(Hkv), Int64(D),
                                                 0.125, &out, &scratch, Int64(r.lowerBound), Int64(r.upperBound))
                            }
                        }
                        outs.append(out)
                    }
                }
            }
            _ = ck_set_isa(-1)
            XCTAssertEqual(outs.count, ISALevels.available.count * 8)
            for o in outs.dropFirst() { XCTAssertEqual(outs[0].map(\.bitPattern), o.map(\.bitPattern), "npos \(npos)") }
        }
        try ISALevels.report("OpsTests.testAttentionSameBitsOnEveryISALevelLayoutAndHeadRange")
    }

    /// A half-precision KV cache's conversion: ck_f32_to_f16 gives ck_float_to_half's bits (round to nearest, ties to
    /// even) on every ISA level, for ordinary values, ties, subnormals, overflow, infinities and signed zeros, at
    /// lengths that leave a tail after the 16-wide loop; and known values convert exactly.
    func testFloatToHalfRowSameBitsOnEveryISALevel() throws {
        var x = randoms(1000, 4)
        x += randoms(37, 70000) + randoms(37, 1e-5)
        x += [0, -0.0, 1, -2, 65504, 65519.99, 65520, -65520, 1e9, .infinity, -.infinity, 6.1035156e-05, 5.9604645e-08,
              2.9802322e-08, 2.9802326e-08, 8.940697e-08, 1 + 1.0 / 2048, 1 + 3.0 / 2048, 1 + 1.0 / 4096, -(1 + 3.0 / 4096)]
        let want = x.map { ck_float_to_half($0) }
        // Known encodings: 1 + 2^-11 is a tie between 1 and 1 + 2^-10 and rounds to the even 1; 1 + 3·2^-11 rounds
        // up to 1 + 2^-9; 65520 overflows to infinity; 2^-25 (a tie with 0) rounds to 0, just above it to 2^-24.
        let known: [(Float, UInt16)] = [(1, 0x3C00), (-2, 0xC000), (65504, 0x7BFF), (65520, 0x7C00), (1 + 1.0 / 2048, 0x3C00),
                                        (1 + 3.0 / 2048, 0x3C02), (2.9802322e-08, 0x0000), (2.9802326e-08, 0x0001),
                                        (-0.0, 0x8000), (.infinity, 0x7C00), (6.1035156e-05, 0x0400)]
        for (v, h) in known { XCTAssertEqual(ck_float_to_half(v), h, "\(v)") }
        var runs = 0
        for level in ISALevels.available {
            guard ISALevels.force(level) else { continue }
            for n in [x.count, 15, 16, 17, 1] {
                var out = [UInt16](repeating: 0xFFFF, count: n)
                ck_f32_to_f16(x, &out, Int64(n))
                XCTAssertEqual(out, Array(want.prefix(n)), "level \(level), n \(n)")
            }
            // And back: ck_f16_to_f32 gives ck_half_to_float's bits for all 65,536 encodings (NaNs as NaN).
            let all = (0...UInt16.max).map { $0 }
            var back = [Float](repeating: 0, count: all.count)
            ck_f16_to_f32(all, &back, Int64(all.count))
            for (h, f) in zip(all, back) {
                let want = ck_half_to_float(h)
                if want.isNaN { XCTAssertTrue(f.isNaN, "level \(level), \(h)") } else { XCTAssertEqual(f.bitPattern, want.bitPattern, "level \(level), \(h)") }
            }
            runs += 1
        }
        _ = ck_set_isa(-1)
        XCTAssertEqual(runs, ISALevels.available.count)
        try ISALevels.report("OpsTests.testFloatToHalfRowSameBitsOnEveryISALevel")
    }

    /// Attention over binary16 keys and values equals fp32 attention over the same values converted (bit for bit), on
    /// every ISA level, in the head-major cache layout the decoder uses, for any head range.
    func testHalfAttentionEqualsFP32AttentionOnConvertedValues() throws {
        let H = 9, Hkv = 3, D = 64
        for npos in [1, 2, 15, 16, 17, 33, 100, 203] {
            let cap = npos + 3
            let q = randoms(H * D)
            let K16 = randoms(Hkv * cap * D, 3).map { ck_float_to_half($0) }, V16 = randoms(Hkv * cap * D).map { ck_float_to_half($0) }
            let K = K16.map { ck_half_to_float($0) }, V = V16.map { ck_half_to_float($0) }
            var outs: [[Float]] = []
            for level in ISALevels.available.reversed() {
                guard ISALevels.force(level) else { continue }
                var want = [Float](repeating: 0, count: H * D)
                ck_attention_row(q, K, V, Int64(D), Int64(cap * D), Int64(npos), Int64(H), Int64(Hkv), Int64(D), 0.125, &want, nil, 0, Int64(H))
                for ranges in [[0..<H], [0..<3, 3..<6, 6..<9], [0..<2, 2..<7, 7..<9]] {
                    var out = [Float](repeating: .nan, count: H * D)
                    for r in ranges {
                        ck_attention_row_f16(q, K16, V16, Int64(D), Int64(cap * D), Int64(npos), Int64(H), Int64(Hkv), Int64(D),
                                             0.125, &out, nil, Int64(r.lowerBound), Int64(r.upperBound))
                    }
                    XCTAssertEqual(out.map(\.bitPattern), want.map(\.bitPattern), "npos \(npos), level \(level), ranges \(ranges)")
                }
                outs.append(want)
            }
            _ = ck_set_isa(-1)
            XCTAssertEqual(outs.count, ISALevels.available.count)
            for o in outs.dropFirst() { XCTAssertEqual(outs[0].map(\.bitPattern), o.map(\.bitPattern), "npos \(npos)") }
        }
        try ISALevels.report("OpsTests.testHalfAttentionEqualsFP32AttentionOnConvertedValues")
    }

    /// SiLU(g) * u: the AVX-512 path gives the portable path's bits (the same exp), within 1e-6 of the exact value.
    func testSiluMulSameBitsOnEveryISALevelAndAccurate() throws {
        var g = randoms(4099).map { $0 * 40 }
        g[0] = -100; g[1] = 100; g[2] = 0; g[3] = -88.5; g[4] = 87.9
        let u = randoms(4099, 5)
        var outs: [[Float]] = []
        for level in ISALevels.available.reversed() {
            guard ISALevels.force(level) else { continue }
            var y = g
            ck_silu_mul(&y, u, Int64(y.count))
            outs.append(y)
        }
        _ = ck_set_isa(-1)
        XCTAssertEqual(outs.count, ISALevels.available.count)
        for o in outs.dropFirst() { XCTAssertEqual(outs[0].map(\.bitPattern), o.map(\.bitPattern)) }
        for i in g.indices {
            let x = Double(g[i]), want = x / (1 + exp(-x)) * Double(u[i])
            XCTAssertEqual(Double(outs[0][i]), want, accuracy: 1e-6 * abs(want) + 1e-12, "g = \(g[i])")
        }
        try ISALevels.report("OpsTests.testSiluMulSameBitsOnEveryISALevelAndAccurate")
    }

    func testExpAccuracy() {
        var worst = 0.0
        var x: Float = -87
        while x <= 0 {
            let got = Double(ck_exp(x)), want = exp(Double(x))
            worst = max(worst, abs(got - want) / want)
            x += 0.0137
        }
        XCTAssertLessThan(worst, 5e-7)
        XCTAssertEqual(ck_exp(-100), 0)
        XCTAssertEqual(ck_exp(0), 1)
    }

    func testSiluMulAndSoftmax() {
        var g = randoms(100, 6)
        let u = randoms(100), g0 = g
        ck_silu_mul(&g, u, 100)
        for i in 0..<100 { XCTAssertEqual(Double(g[i]), Double(g0[i]) / (1 + exp(-Double(g0[i]))) * Double(u[i]), accuracy: 1e-6) }
        var x: [Float] = [1, 2, 3, 1000]
        ck_softmax(&x, 4)
        XCTAssertEqual(x[3], 1, accuracy: 1e-6)
        XCTAssertEqual(x[0], 0, accuracy: 1e-6)
        var y: [Float] = [0, 0, log(2)]
        ck_softmax(&y, 3)
        XCTAssertEqual(y[0], 0.25, accuracy: 1e-6)
        XCTAssertEqual(y[2], 0.5, accuracy: 1e-6)
    }
}
