import XCTest
import Foundation
import CausalKernels
import CCausalKernels

/// The opt-in int8-activation path (ck_q8.h, MatMulQ8.swift): activation quantization equal to a Swift twin on
/// every ISA level, products equal bit for bit to a Swift twin of the canonical sequence on every level (scalar,
/// AVX2, AVX-512 VNNI), rows invariant to n, neighbours, row split and threads, close to the fp32 path, and the
/// process-wide switch routing `matmul` only for the supported quantized types.
final class MatMulQ8Tests: XCTestCase {
    static let types: [DType] = [.q8_0, .q4_0, .q4_1, .q5_0, .q5_1, .iq4_nl, .q4_k, .q5_k, .q6_k]
    static let pool1 = ThreadPool(threads: 1)
    static let pool2 = ThreadPool(threads: 2)

    override func tearDown() {
        ActivationPrecision.current = .fp32
        ck_set_isa(-1)
        super.tearDown()
    }

    // MARK: Swift twins

    /// The quantization rule of ck_q8.h, written out in Swift.
    static func quantizeTwin(_ x: [Float]) -> QuantizedActivations {
        var codes = [Int8](), scales = [Float](), sums = [Int32](), halves = [Int32](), scaled = [Float]()
        for b in 0..<x.count / 32 {
            let blk = x[(32 * b)..<(32 * b + 32)]
            let amaxBits = blk.map { $0.bitPattern & 0x7FFF_FFFF }.max()!
            var q = [Int](repeating: 0, count: 32)
            if amaxBits >= 0x7F80_0000 {
                scales.append(.nan)
            } else if Float(bitPattern: amaxBits) < 0x1p-100 {
                scales.append(0)
            } else {
                let d = Float(bitPattern: amaxBits) / 127, id = 1 / d
                scales.append(d)
                for (i, v) in blk.enumerated() { q[i] = min(127, max(-127, Int((v * id).rounded(.toNearestOrEven)))) }
            }
            codes += q.map { Int8($0) }
            let lo = q[0..<16].reduce(0, +), hi = q[16..<32].reduce(0, +)
            halves += [Int32(lo), Int32(hi)]
            sums.append(Int32(lo + hi))
            scaled.append(scales.last! * Float(lo + hi))
        }
        return QuantizedActivations(codes: codes, scales: scales, blockSums: sums, halfSums: halves, scaledSums: scaled)
    }

    /// One 32-element weight block in the terms of ck_q8.h's table: integer codes q, half scales, dw and (for types
    /// with a min) mw. Written from the block layouts of CCausalKernels.h.
    struct Block { var q: [Int]; var sc0: Int; var sc1: Int; var dw: Float; var mw: Float? }

    static func block(_ w: WeightMatrix, row: Int, block b: Int) -> Block {
        let p = (w.data + row * w.rowBytes).assumingMemoryBound(to: UInt8.self)
        func h(_ o: Int) -> Float { ck_half_to_float(UInt16(p[o]) | UInt16(p[o + 1]) << 8) }
        func u32(_ o: Int) -> UInt32 { (0..<4).reduce(0) { $0 | UInt32(p[o + $1]) << (8 * $1) } }
        func nib(_ qs: Int, _ i: Int) -> Int { i < 16 ? Int(p[qs + i] & 15) : Int(p[qs + i - 16] >> 4) }
        let kv = [-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113]
        switch w.dtype {
        case .q8_0:
            let o = 34 * b
            return Block(q: (0..<32).map { Int(Int8(bitPattern: p[o + 2 + $0])) }, sc0: 1, sc1: 1, dw: h(o), mw: nil)
        case .q4_0, .iq4_nl:
            let o = 18 * b
            return Block(q: (0..<32).map { w.dtype == .q4_0 ? nib(o + 2, $0) - 8 : kv[nib(o + 2, $0)] }, sc0: 1, sc1: 1, dw: h(o), mw: nil)
        case .q4_1:
            let o = 20 * b
            return Block(q: (0..<32).map { nib(o + 4, $0) }, sc0: 1, sc1: 1, dw: h(o), mw: h(o + 2))
        case .q5_0, .q5_1:
            let one = w.dtype == .q5_1, o = (one ? 24 : 22) * b
            let qh = u32(o + (one ? 4 : 2)), qs = o + (one ? 8 : 6)
            let codes = (0..<32).map { nib(qs, $0) | Int((qh >> UInt32($0)) & 1) << 4 }
            return Block(q: one ? codes : codes.map { $0 - 16 }, sc0: 1, sc1: 1, dw: h(o), mw: one ? h(o + 2) : nil)
        case .q4_k, .q5_k:
            let five = w.dtype == .q5_k, o = (five ? 176 : 144) * (b / 8), j = b % 8, s = o + 4
            let sc = j < 4 ? Int(p[s + j] & 63) : Int(p[s + j + 4] & 15) | Int(p[s + j - 4] >> 6) << 4
            let m = j < 4 ? Int(p[s + j + 4] & 63) : Int(p[s + j + 4] >> 4) | Int(p[s + j] >> 6) << 4
            let qs = o + (five ? 48 : 16) + 32 * (j / 2)
            let q = (0..<32).map { l -> Int in
                let c = j % 2 == 0 ? Int(p[qs + l] & 15) : Int(p[qs + l] >> 4)
                return five ? c | Int((p[o + 16 + l] >> UInt8(j)) & 1) << 4 : c
            }
            return Block(q: q, sc0: 1, sc1: 1, dw: h(o) * Float(sc), mw: -(h(o + 2) * Float(m)))
        case .q6_k:
            let o = 210 * (b / 8), j = b % 8, hh = j / 4, g = j % 4
            let q = (0..<32).map { l -> Int in
                let byte = p[o + 64 * hh + 32 * (g & 1) + l]
                let lo = g < 2 ? Int(byte & 15) : Int(byte >> 4)
                return (lo | Int((p[o + 128 + 32 * hh + l] >> UInt8(2 * g)) & 3) << 4) - 32
            }
            return Block(q: q, sc0: Int(Int8(bitPattern: p[o + 192 + 2 * j])), sc1: Int(Int8(bitPattern: p[o + 193 + 2 * j])),
                         dw: h(o + 208), mw: nil)
        default:
            fatalError("\(w.dtype.name) has no int8 path")
        }
    }

    /// The canonical sequence of ck_q8.h for one (row, token) pair.
    static func canonical(_ w: WeightMatrix, row: Int, _ a: QuantizedActivations) -> Float {
        var acc = [Float](repeating: 0, count: 16)
        for b in 0..<w.cols / 32 {
            let blk = block(w, row: row, block: b)
            var lo = 0, hi = 0, asum = 0
            for i in 0..<32 {
                let ai = Int(a.codes[32 * b + i])
                if i < 16 { lo += blk.q[i] * ai } else { hi += blk.q[i] * ai }
                asum += ai
            }
            let isum = blk.sc0 * lo + blk.sc1 * hi
            XCTAssertLessThan(abs(isum), 1 << 24)
            let da = a.scales[b]
            acc[b % 16] = acc[b % 16].addingProduct(blk.dw * da, Float(isum))
            if let mw = blk.mw { acc[b % 16] = acc[b % 16].addingProduct(mw, da * Float(asum)) }
        }
        for s in [8, 4, 2] { for j in 0..<s { acc[j] = acc[j] + acc[j + s] } }
        return acc[0] + acc[1]
    }

    /// ck_matmul_q8 over all rows for n tokens of x (quantized with the kernels as MatMulQ8.swift quantizes them:
    /// no lane-major copy for n < 3, into a buffer of 0xAA bytes, so that reading an unwritten copy shows), as one
    /// call.
    static func kernel(_ w: WeightMatrix, _ x: [Float], n: Int, rows r: Range<Int>? = nil) -> [Float] {
        let K = w.cols, xs = ck_q8_row_bytes(Int64(K))
        var xq = [UInt8](repeating: 0xAA, count: n * xs)
        var y = [Float](repeating: .nan, count: n * w.rows)
        let range = r ?? 0..<w.rows
        xq.withUnsafeMutableBytes { q in
            x.withUnsafeBufferPointer { ck_quantize_activations_q8_rows_for($0.baseAddress!, Int64(K), Int64(n), Int64(K), q.baseAddress!, Int64(n)) }
            y.withUnsafeMutableBufferPointer {
                XCTAssertEqual(ck_matmul_q8(w.dtype.rawValue, w.data, Int64(K), Int64(range.lowerBound), Int64(range.upperBound),
                                            q.baseAddress!, Int64(n), $0.baseAddress!, Int64(w.rows)), 0)
            }
        }
        return y
    }

    // MARK: Quantization

    /// Rows with ordinary values, ties at exactly .5 after scaling, zero / tiny / NaN / infinite blocks, and K
    /// that is not a multiple of 512 (padding) quantize to the twin's bytes on every level; padding is zero.
    func testQuantizeActivationsEqualsTwinOnEveryLevel() throws {
        var rng = SplitMix64(seed: 81)
        for K in [32, 96, 224, 512, 896, 1536] {
            var x = randomFloats(K, &rng, scale: 2)
            if K >= 96 {
                // Block 1: amax 127 -> d = 1, id = 1: halves round to even.
                for i in 0..<32 { x[32 + i] = Float(i % 8) - 3.5 }
                x[32 + 31] = 127
                // Block 2: all zero except a subnormal-range magnitude (below 2^-100: the block becomes zero).
                for i in 0..<32 { x[64 + i] = 0 }
                x[64 + 5] = 0x1p-110
            }
            if K >= 224 {
                x[96 + 3] = .nan         // block 3: NaN scale, zero codes
                x[128 + 7] = -.infinity  // block 4: NaN scale too
                x[160 + 1] = 1e30         // block 5: huge but finite
                x[192 + 2] = 1e-30        // block 6: small but representable
            }
            let twin = Self.quantizeTwin(x)
            forEachISA { _, isa in
                let q = QuantizedActivations(quantizing: x)
                XCTAssertEqual(q, twin, "K=\(K) \(isa) (q8 level \(String(cString: ck_q8_isa_name())))")
                // Padding blocks: zero bytes in every array.
                let xs = ck_q8_row_bytes(Int64(K))
                var raw = [UInt8](repeating: 0xAA, count: xs)
                raw.withUnsafeMutableBytes { b in x.withUnsafeBufferPointer { ck_quantize_activations_q8($0.baseAddress!, Int64(K), b.baseAddress!) } }
                let nb = K / 32, npb = (nb + 15) / 16 * 16
                XCTAssertEqual(xs, npb * 84)
                var padding = 0
                for b in nb..<npb {
                    let g = b / 16, q = (b % 16) / 4, i = b % 4, p = 16 * g + 4 * i + q
                    for h in 0..<2 {
                        let o = 512 * g + 128 * q + 64 * h + 16 * i
                        padding += raw[o..<(o + 16)].filter { $0 != 0 }.count
                    }
                    for a in 0..<5 {  // d, s32, slo, shi, ds
                        let o = npb * 32 + a * npb * 4 + 4 * p
                        padding += raw[o..<(o + 4)].filter { $0 != 0 }.count
                    }
                }
                XCTAssertEqual(padding, 0, "K=\(K) \(isa): padding not zero")
                // The lane-major copy (ck_q8.h's ln): dword p = 4 i + q of vector k = 4 h + m of group G holds codes
                // 16 h + 4 m ..< + 4 of block 16 G + 4 q + i (zero for padding blocks).
                var lanesWrong = 0
                for b in 0..<npb {
                    let g = b / 16, q = (b % 16) / 4, i = b % 4, p = 4 * i + q
                    for k in 0..<8 {
                        for j in 0..<4 {
                            let c = b < nb ? UInt8(bitPattern: twin.codes[32 * b + 16 * (k / 4) + 4 * (k % 4) + j]) : 0
                            if raw[npb * 52 + 512 * g + 64 * k + 4 * p + j] != c { lanesWrong += 1 }
                        }
                    }
                }
                XCTAssertEqual(lanesWrong, 0, "K=\(K) \(isa): lane-major codes")
            }
            if K >= 96 {
                XCTAssertEqual(twin.scales[1], 1)
                XCTAssertEqual(Array(twin.codes[32..<40]), [-4, -2, -2, 0, 0, 2, 2, 4])  // -3.5 ... 3.5, ties to even
                XCTAssertEqual(twin.scales[2], 0)
            }
            if K >= 224 { XCTAssertTrue(twin.scales[3].isNaN && twin.scales[4].isNaN) }
        }
        XCTAssertEqual(ck_q8_row_bytes(0), 0)
        XCTAssertEqual(ck_q8_row_bytes(48), 0)
        XCTAssertEqual(ck_q8_row_bytes(32), 16 * 84)
        try ISALevels.report("MatMulQ8Tests.testQuantizeActivationsEqualsTwinOnEveryLevel")
    }

    // MARK: Products

    /// The Swift twin's reading of each block (dw * sc * q + mw) reproduces the dequantized weights, so the
    /// twin reads the layouts as the dequantizers do.
    func testTwinBlocksReproduceDequantizedWeights() {
        var rng = SplitMix64(seed: 82)
        for dt in Self.types {
            let K = dt.blockSize == 256 ? 512 : 96
            let w = OwnedWeights(dt, rows: 5, cols: K, rng: &rng)
            var deq = [Float](repeating: 0, count: K)
            for r in 0..<5 {
                deq.withUnsafeMutableBufferPointer { dequantizeReference(w.matrix, row: r, into: $0.baseAddress!) }
                for b in 0..<K / 32 {
                    let blk = Self.block(w.matrix, row: r, block: b)
                    for i in 0..<32 {
                        let v = Double(blk.dw) * Double(i < 16 ? blk.sc0 : blk.sc1) * Double(blk.q[i]) + Double(blk.mw ?? 0)
                        XCTAssertEqual(v, Double(deq[32 * b + i]), accuracy: 1e-6 * max(1, abs(v)), "\(dt.name) row \(r) element \(32 * b + i)")
                    }
                }
            }
        }
    }

    /// Every level equals the Swift twin of the canonical sequence bit for bit, on random blocks (random bytes, scale
    /// fields of mixed sign and size, subnormal and zero included) and on quantized rows, for K with partial
    /// groups of 16 blocks (every count of quads, partial quads) and odd super-block counts.
    func testEveryLevelEqualsCanonicalTwin() throws {
        var rng = SplitMix64(seed: 83)
        for dt in Self.types {
            // Blocks per row: 1, 7, 15 (a last group of 1, 2 or 4 quads, partial quads), 16, 28, 45 (13 after a full group).
            for K in dt.blockSize == 256 ? [256, 768, 1024] : [32, 224, 480, 512, 896, 1440] {
                let rows = 21, n = 6  // a 4-token tile and two single tokens on the many-token path
                let weights = [KQuantTests.randomWeights(dt, rows: rows, cols: K, rng: &rng), nil]
                let owned = OwnedWeights(dt, rows: rows, cols: K, rng: &rng)
                for (wi, raw) in weights.enumerated() {
                    let w = raw?.matrix ?? owned.matrix
                    var x = randomFloats(n * K, &rng, scale: 3)
                    x[7] = 40  // an outlier in token 0's first block
                    var expected = [Float](repeating: 0, count: n * rows)
                    for t in 0..<n {
                        let a = Self.quantizeTwin(Array(x[(t * K)..<((t + 1) * K)]))
                        for o in 0..<rows { expected[t * rows + o] = Self.canonical(w, row: o, a) }
                    }
                    forEachISA { _, isa in
                        let y = Self.kernel(w, x, n: n)
                        assertSameBits(y, expected, "\(dt.name) K=\(K) \(wi == 0 ? "random blocks" : "quantized rows") \(isa)/\(String(cString: ck_q8_isa_name()))")
                    }
                }
            }
        }
        try ISALevels.report("MatMulQ8Tests.testEveryLevelEqualsCanonicalTwin")
    }

    /// A token's row of results is the same bits whatever n, its position, its neighbours (wild values included),
    /// the row range of the call, the thread count and the ISA level.
    func testBatchRowAndThreadInvariance() throws {
        var rng = SplitMix64(seed: 84)
        let pool3 = ThreadPool(threads: 3)
        for dt in Self.types {
            let rows = 203, K = dt.blockSize == 256 ? 768 : 544
            let w = KQuantTests.randomWeights(dt, rows: rows, cols: K, rng: &rng)
            let N = 9
            let X = randomFloats(N * K, &rng, scale: 3)
            let wild = randomFloats(17 * K, &rng, scale: 1000)
            func token(_ t: Int) -> ArraySlice<Float> { X[(t * K)..<((t + 1) * K)] }
            func run(_ xs: [Float], _ n: Int, _ pool: ThreadPool) -> [Float] {
                var y = [Float](repeating: .nan, count: n * rows)
                xs.withUnsafeBufferPointer { xp in
                    y.withUnsafeMutableBufferPointer { XCTAssertTrue(matmulQ8(w.matrix, xp.baseAddress!, rows: n, into: $0.baseAddress!, pool: pool)) }
                }
                return y
            }
            var baseline: [[Float]]? = nil
            forEachISA { _, isa in
                let base = (0..<N).map { run(Array(token($0)), 1, Self.pool1) }
                if let b = baseline {
                    for t in 0..<N { assertSameBits(base[t], b[t], "\(dt.name) token \(t): \(isa) vs the scalar level") }
                } else {
                    baseline = base
                }
                for n in [2, 3, 4, 5, 8, 9, 17] {
                    let ids = (0..<n).map { (3 + $0 * 5) % N }
                    let xs = ids.flatMap { token($0) }
                    for pool in [Self.pool1, Self.pool2, pool3] {
                        let y = run(xs, n, pool)
                        for (i, t) in ids.enumerated() {
                            assertSameBits(Array(y[(i * rows)..<((i + 1) * rows)]), base[t], "\(dt.name) \(isa): token \(t) at \(i) of \(n), \(pool.threadCount) thread(s)")
                        }
                    }
                    let pos = n / 2
                    var xw = Array(wild[0..<(n * K)])
                    xw.replaceSubrange((pos * K)..<((pos + 1) * K), with: token(0))
                    let y = run(xw, n, Self.pool2)
                    assertSameBits(Array(y[(pos * rows)..<((pos + 1) * rows)]), base[0], "\(dt.name) \(isa): wild neighbours, n=\(n)")
                }
                // Row ranges: a call over rows 17..<150 writes exactly those rows, with the same bits.
                let x0 = Array(token(2))
                let part = Self.kernel(w.matrix, x0, n: 1, rows: 17..<150)
                assertSameBits(Array(part[17..<150]), Array(base[2][17..<150]), "\(dt.name) \(isa): row range")
                XCTAssertTrue(part[0..<17].allSatisfy(\.isNaN) && part[150...].allSatisfy(\.isNaN), "\(dt.name): rows outside the range written")
            }
        }
        try ISALevels.report("MatMulQ8Tests.testBatchRowAndThreadInvariance")
    }

    /// Several products of one input (the decoder's Q/K/V and gate/up go through `matmul([w], x, ...)`): one fork-join,
    /// one quantization of the input on the int8 path. Every output has the bits of its own `matmul` call, on both
    /// precisions, for mixed types (an F16 matrix beside quantized ones: the int8 path leaves it fp32), a matrix too
    /// small to share (it runs alone), n from 1 to 19 and 1, 2 or 3 threads.
    func testSeveralProductsOfOneInputEqualSeparateCalls() {
        var rng = SplitMix64(seed: 85)
        let pool3 = ThreadPool(threads: 3)
        let K = 512
        let shapes: [(DType, Int)] = [(.q4_k, 200), (.q6_k, 72), (.q5_0, 72), (.f16, 40), (.q8_0, 8)]
        let ws = shapes.map { KQuantTests.randomWeights($0.0, rows: $0.1, cols: K, rng: &rng) }
        for precision in ActivationPrecision.allCases {
            ActivationPrecision.current = precision
            for n in [1, 2, 3, 8, 19] {
                let x = randomFloats(n * K, &rng, scale: 2)
                for pool in [Self.pool1, Self.pool2, pool3] {
                    for pick in [[0, 1, 2], [0, 3], [1, 4, 0], [2]] {
                        let mats = pick.map { ws[$0].matrix }
                        var outs = mats.map { [Float](repeating: .nan, count: n * $0.rows) }
                        var alone = outs
                        x.withUnsafeBufferPointer { xp in
                            let ptrs = outs.indices.map { UnsafeMutablePointer<Float>.allocate(capacity: n * mats[$0].rows) }
                            defer { ptrs.forEach { $0.deallocate() } }
                            matmul(mats, xp.baseAddress!, rows: n, into: ptrs, pool: pool)
                            for i in mats.indices {
                                outs[i] = Array(UnsafeBufferPointer(start: ptrs[i], count: n * mats[i].rows))
                                alone[i].withUnsafeMutableBufferPointer { matmul(mats[i], xp.baseAddress!, rows: n, into: $0.baseAddress!, pool: pool) }
                            }
                        }
                        for i in mats.indices {
                            assertSameBits(outs[i], alone[i], "\(precision) n=\(n) \(pool.threadCount) threads, \(mats[i].dtype.name) (\(mats[i].rows) rows) among \(pick)")
                        }
                    }
                }
            }
        }
    }

    /// The tile shapes of the many-token kernels (AVX-512: a GEMM on lane-major operands for n >= 3, tiles of
    /// 4 rows x 3 tokens, row blocks decoded once; a short last group of <= 4 blocks in the quad layout): for every
    /// type, K with every kind of last group (none, 1-4 blocks, 2-3 quads, partial quads, one super-block of a pair),
    /// n = 1 ... 40 and row ranges that are not multiples of 4, each (row, token) result equals the canonical twin's
    /// bits on every level.
    func testManyTokenTilesEqualCanonicalTwin() throws {
        var rng = SplitMix64(seed: 87)
        let maxN = 40
        for dt in Self.types {
            for K in dt.blockSize == 256 ? [256, 768, 1024] : [128, 224, 576, 640, 896, 1440] {
                let rows = 11
                let w = KQuantTests.randomWeights(dt, rows: rows, cols: K, rng: &rng)
                var x = randomFloats(maxN * K, &rng, scale: 2)
                x[K + 3] = -60  // an outlier in token 1
                var expected = [[Float]]()
                for t in 0..<maxN {
                    let a = Self.quantizeTwin(Array(x[(t * K)..<((t + 1) * K)]))
                    expected.append((0..<rows).map { Self.canonical(w.matrix, row: $0, a) })
                }
                forEachISA { _, isa in
                    for n in 1...maxN {
                        let r0 = n % 3, r1 = rows - (n % 2)  // 9-11 rows from row 0-2
                        let y = Self.kernel(w.matrix, Array(x[0..<(n * K)]), n: n, rows: r0..<r1)
                        for t in 0..<n {
                            let got = Array(y[(t * rows + r0)..<(t * rows + r1)])
                            assertSameBits(got, Array(expected[t][r0..<r1]), "\(dt.name) K=\(K) n=\(n) token \(t) rows \(r0)..<\(r1) \(isa)/\(String(cString: ck_q8_isa_name()))")
                        }
                        XCTAssertTrue(y[0..<r0].allSatisfy(\.isNaN) && y[(rows * (n - 1) + r1)...].allSatisfy(\.isNaN), "\(dt.name) K=\(K) n=\(n): rows outside the range written")
                    }
                }
            }
        }
        try ISALevels.report("MatMulQ8Tests.testManyTokenTilesEqualCanonicalTwin")
    }

    /// Many tokens whose quantized rows exceed 256 KiB take the other blocking of the AVX-512 GEMM (row blocks sized
    /// to the core's L2 instead of 8 rows, n = 70-100 tokens, 70 rows: two row blocks): still the canonical bits.
    func testManyTokensLargeRowBlocksEqualCanonicalTwin() throws {
        var rng = SplitMix64(seed: 88)
        for dt in Self.types {
            let K = dt.blockSize == 256 ? 1024 : 1440, rows = 70
            let n = dt.blockSize == 256 ? 100 : 70
            XCTAssertGreaterThan(n * ck_q8_row_bytes(Int64(K)), 256 << 10)
            let w = KQuantTests.randomWeights(dt, rows: rows, cols: K, rng: &rng)
            var x = randomFloats(n * K, &rng, scale: 2)
            x[5 * K + 77] = 90  // an outlier in token 5
            let expected = (0..<n).map { t -> [Float] in
                let a = Self.quantizeTwin(Array(x[(t * K)..<((t + 1) * K)]))
                return (0..<rows).map { Self.canonical(w.matrix, row: $0, a) }
            }
            forEachISA { _, isa in
                let y = Self.kernel(w.matrix, x, n: n, rows: 1..<(rows - 1))
                for t in 0..<n {
                    assertSameBits(Array(y[(t * rows + 1)..<(t * rows + rows - 1)]), Array(expected[t][1..<(rows - 1)]),
                                   "\(dt.name) K=\(K) n=\(n) token \(t) \(isa)/\(String(cString: ck_q8_isa_name()))")
                }
            }
        }
        try ISALevels.report("MatMulQ8Tests.testManyTokensLargeRowBlocksEqualCanonicalTwin")
    }

    /// ck_quantize_activations_q8_rows_for writes the lane-major copy only for products of 3 or more tokens (the
    /// only ones that read it) and otherwise the same bytes as ck_quantize_activations_q8_rows.
    func testLaneCopyWrittenOnlyForProductsThatReadIt() {
        var rng = SplitMix64(seed: 89)
        for K in [96, 896] {
            let n = 2, xs = ck_q8_row_bytes(Int64(K)), npb = (K / 32 + 15) / 16 * 16, ln = npb * 52
            let x = randomFloats(n * K, &rng, scale: 2)
            func quantize(_ tokens: Int?) -> [UInt8] {
                var b = [UInt8](repeating: 0xAA, count: n * xs)
                b.withUnsafeMutableBytes { q in
                    x.withUnsafeBufferPointer {
                        if let tokens {
                            ck_quantize_activations_q8_rows_for($0.baseAddress!, Int64(K), Int64(n), Int64(K), q.baseAddress!, Int64(tokens))
                        } else {
                            ck_quantize_activations_q8_rows($0.baseAddress!, Int64(K), Int64(n), Int64(K), q.baseAddress!)
                        }
                    }
                }
                return b
            }
            let full = quantize(nil)
            XCTAssertEqual(quantize(3), full, "K=\(K): tokens 3")
            XCTAssertEqual(quantize(512), full, "K=\(K): tokens 512")
            for tokens in [1, 2] {
                let part = quantize(tokens)
                for t in 0..<n {
                    let r = t * xs
                    XCTAssertEqual(part[r..<(r + ln)], full[r..<(r + ln)], "K=\(K) tokens \(tokens) row \(t): codes, scales, sums")
                    XCTAssertTrue(part[(r + ln)..<(r + xs)].allSatisfy { $0 == 0xAA }, "K=\(K) tokens \(tokens) row \(t): lane-major copy written")
                    XCTAssertTrue(full[(r + ln)..<(r + xs)].contains { $0 != 0xAA }, "K=\(K) row \(t): full copy missing")
                }
            }
        }
    }

    /// Close to the fp32 path: on activations like a transformer's (mostly moderate, a few outliers), the
    /// relative RMS difference from the exact product of the same weights stays below 1.5% (measured 0.59-0.75%).
    func testAccuracyAgainstExactProducts() {
        var rng = SplitMix64(seed: 85)
        for dt in Self.types {
            let rows = 64, K = dt.blockSize == 256 ? 1024 : 896, n = 4
            let w = OwnedWeights(dt, rows: rows, cols: K, rng: &rng)
            var x = randomFloats(n * K, &rng, scale: 1)
            for i in stride(from: 13, to: x.count, by: 211) { x[i] *= 8 }
            var exact = [Float](repeating: 0, count: n * rows), y = exact
            x.withUnsafeBufferPointer { xp in
                exact.withUnsafeMutableBufferPointer { matmulReference(w.matrix, xp.baseAddress!, rows: n, into: $0.baseAddress!) }
                y.withUnsafeMutableBufferPointer { XCTAssertTrue(matmulQ8(w.matrix, xp.baseAddress!, rows: n, into: $0.baseAddress!, pool: Self.pool2)) }
            }
            var num = 0.0, den = 0.0
            for i in 0..<y.count { num += Double(y[i] - exact[i]) * Double(y[i] - exact[i]); den += Double(exact[i]) * Double(exact[i]) }
            let rel = (num / den).squareRoot()
            XCTAssertLessThan(rel, 0.015, "\(dt.name): relative RMS error \(rel)")
            XCTAssertGreaterThan(rel, 1e-5, "\(dt.name): int8 activations cannot be this exact (\(rel)); is the path used?")
        }
    }

    // MARK: The switch

    /// With `.int8`, `matmul` gives the int8 path's bits for the supported types and the fp32 path's for the others
    /// (F32 weights: what `--precision reference` uses); `.fp32` restores the fp32 path.
    func testSwitchRoutesOnlySupportedTypes() {
        var rng = SplitMix64(seed: 86)
        XCTAssertEqual(Set(ActivationPrecision.int8Types), Set(Self.types))
        for dt in DType.allCases {
            let rows = 40, K = dt.blockSize == 256 ? 512 : 128, n = 2
            let w = OwnedWeights(dt, rows: rows, cols: K, rng: &rng)
            let x = randomFloats(n * K, &rng)
            func viaMatmul() -> [Float] {
                var y = [Float](repeating: .nan, count: n * rows)
                x.withUnsafeBufferPointer { xp in y.withUnsafeMutableBufferPointer { matmul(w.matrix, xp.baseAddress!, rows: n, into: $0.baseAddress!, pool: Self.pool2) } }
                return y
            }
            let fp32 = ActivationPrecision.with(.fp32) { viaMatmul() }
            let int8 = ActivationPrecision.with(.int8) { viaMatmul() }
            XCTAssertEqual(ActivationPrecision.current, .fp32)
            if Self.types.contains(dt) {
                assertSameBits(int8, Self.kernel(w.matrix, x, n: n), "\(dt.name): matmul under .int8 vs ck_matmul_q8")
                XCTAssertNotEqual(int8.map(\.bitPattern), fp32.map(\.bitPattern), "\(dt.name): .int8 did not change the path")
            } else {
                assertSameBits(int8, fp32, "\(dt.name): not an int8 type, must stay fp32")
                var y = [Float](repeating: 0, count: n * rows)
                let used = x.withUnsafeBufferPointer { xp in y.withUnsafeMutableBufferPointer { matmulQ8(w.matrix, xp.baseAddress!, rows: n, into: $0.baseAddress!, pool: Self.pool1) } }
                XCTAssertFalse(used)
                XCTAssertEqual(ck_matmul_q8(dt.rawValue, w.matrix.data, Int64(K), 0, Int64(rows), nil, 1, nil, 0), -1)
            }
        }
    }
}
