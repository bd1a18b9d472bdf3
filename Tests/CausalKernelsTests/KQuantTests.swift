import XCTest
import Foundation
import CausalKernels
import CCausalKernels

/// Q5_0, Q5_1, IQ4_NL and the K-quants (Q2_K ... Q6_K): dequantization exact against gguf-py (fixtures made by
/// Tests/Fixtures/kquants/make_kquant_fixtures.py), the Swift twin equal to the C dequantizer on every ISA level,
/// and ck_matmul (fused and panel paths) equal bit for bit to the canonical 16-lane sequence over the dequantized
/// weights, whatever n, row range, thread split or neighbours.
final class KQuantTests: XCTestCase {
    static let newTypes: [DType] = [.q5_0, .q5_1, .iq4_nl, .q2_k, .q3_k, .q4_k, .q5_k, .q6_k]
    static let pool1 = ThreadPool(threads: 1)
    static let pool2 = ThreadPool(threads: 2)

    // MARK: Helpers

    /// A weight matrix over bytes it owns.
    final class RawWeights {
        let bytes: UnsafeMutableRawPointer
        let matrix: WeightMatrix
        init(_ dtype: DType, rows: Int, cols: Int, bytes src: [UInt8]) {
            precondition(src.count == dtype.rowBytes(cols)! * rows)
            bytes = .allocate(byteCount: max(1, src.count), alignment: 64)
            bytes.copyMemory(from: src, byteCount: src.count)
            matrix = WeightMatrix(dtype: dtype, data: UnsafeRawPointer(bytes), rows: rows, cols: cols)
        }
        deinit { bytes.deallocate() }
    }

    /// Byte offsets of the fp16 scale fields of one block.
    static func halfFields(_ dt: DType) -> [Int] {
        switch dt {
        case .q5_0, .iq4_nl, .q4_0, .q8_0: return [0]
        case .q5_1, .q4_1, .q4_k, .q5_k: return [0, 2]
        case .q2_k: return [80, 82]
        case .q3_k: return [108]
        case .q6_k: return [208]
        default: return []
        }
    }

    /// Random but valid blocks: random bytes with the scale fields set to finite halves of mixed sign and size
    /// (moderate mostly; some zero, subnormal or large).
    static func randomWeights(_ dt: DType, rows: Int, cols: Int, rng: inout SplitMix64) -> RawWeights {
        let count = dt.rowBytes(cols)! * rows
        var b = (0..<count).map { _ in UInt8.random(in: 0...255, using: &rng) }
        for blk in stride(from: 0, to: count, by: dt.blockBytes) {
            for off in halfFields(dt) {
                let u = Float.random(in: 0..<1, using: &rng)
                let v: Float = u < 0.05 ? 0 : u < 0.1 ? Float.random(in: 0..<6e-5, using: &rng)
                    : u < 0.15 ? Float.random(in: 1..<500, using: &rng) : Float.random(in: 1e-4..<0.1, using: &rng)
                let h = ck_float_to_half(Float.random(in: 0..<1, using: &rng) < 0.3 ? -v : v)
                b[blk + off] = UInt8(h & 0xFF)
                b[blk + off + 1] = UInt8(h >> 8)
            }
        }
        return RawWeights(dt, rows: rows, cols: cols, bytes: b)
    }

    /// The kernels' arithmetic, written out in Swift: 16 lanes, one fused multiply-add per element in increasing k
    /// (a partial last chunk padded with zero products), then the fixed lane tree.
    static func canonicalDot(_ w: UnsafePointer<Float>, _ x: UnsafePointer<Float>, _ K: Int) -> Float {
        var acc = [Float](repeating: 0, count: 16)
        var k = 0
        while k < K {
            for j in 0..<16 {
                acc[j] = k + j < K ? acc[j].addingProduct(w[k + j], x[k + j]) : acc[j].addingProduct(0, 0)
            }
            k += 16
        }
        for s in [8, 4, 2] { for j in 0..<s { acc[j] = acc[j] + acc[j + s] } }
        return acc[0] + acc[1]
    }

    /// y[t][o] for all tokens and rows from the Swift twin's weights and the canonical dot.
    static func expected(_ w: WeightMatrix, _ x: [Float], n: Int) -> [Float] {
        let K = w.cols
        var row = [Float](repeating: 0, count: K), y = [Float](repeating: 0, count: n * w.rows)
        for o in 0..<w.rows {
            row.withUnsafeMutableBufferPointer { dequantizeReference(w, row: o, into: $0.baseAddress!) }
            row.withUnsafeBufferPointer { wp in
                x.withUnsafeBufferPointer { xp in
                    for t in 0..<n { y[t * w.rows + o] = canonicalDot(wp.baseAddress!, xp.baseAddress! + t * K, K) }
                }
            }
        }
        return y
    }

    struct Fixture {
        let name: String, dtype: DType, rows: Int, cols: Int, bytes: [UInt8], values: [Float]
    }

    static func fixtures(_ stem: String) throws -> [Fixture] {
        let dir = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("Fixtures/kquants")
        let blob = try Data(contentsOf: dir.appendingPathComponent(stem + ".bin"))
        let index = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(contentsOf: dir.appendingPathComponent(stem + ".json"))) as? [String: Any])
        let entries = try XCTUnwrap(index["entries"] as? [[String: Any]])
        return try entries.map { e in
            let name = try XCTUnwrap(e["name"] as? String)
            let dtype = try XCTUnwrap(DType(rawValue: Int32(try XCTUnwrap(e["type"] as? Int))), name)
            let rows = try XCTUnwrap(e["rows"] as? Int), cols = try XCTUnwrap(e["cols"] as? Int)
            let bo = try XCTUnwrap(e["bytes_offset"] as? Int), bl = try XCTUnwrap(e["bytes_length"] as? Int)
            let vo = try XCTUnwrap(e["values_offset"] as? Int)
            XCTAssertEqual(bl, dtype.rowBytes(cols)! * rows, name)
            XCTAssertEqual(e["type_name"] as? String, dtype.name)
            let bytes = [UInt8](blob[bo..<(bo + bl)])
            let values: [Float] = (0..<(rows * cols)).map { i in
                let p = vo + 4 * i
                return Float(bitPattern: UInt32(blob[p]) | UInt32(blob[p + 1]) << 8 | UInt32(blob[p + 2]) << 16 | UInt32(blob[p + 3]) << 24)
            }
            return Fixture(name: name, dtype: dtype, rows: rows, cols: cols, bytes: bytes, values: values)
        }
    }

    /// Dequantizes every row of the fixture with the C kernels on every ISA level and with the Swift twin, and
    /// compares all with gguf-py's values bit for bit.
    func checkDequantization(_ f: Fixture, levels: inout Set<String>) {
        let w = RawWeights(f.dtype, rows: f.rows, cols: f.cols, bytes: f.bytes)
        for r in 0..<f.rows {
            let want = Array(f.values[(r * f.cols)..<((r + 1) * f.cols)])
            var twin = [Float](repeating: .nan, count: f.cols)
            twin.withUnsafeMutableBufferPointer { dequantizeReference(w.matrix, row: r, into: $0.baseAddress!) }
            assertSameBits(twin, want, "\(f.name) row \(r): Swift twin vs gguf-py")
            forEachISA { _, isa in
                levels.insert(isa)
                var got = [Float](repeating: .nan, count: f.cols)
                got.withUnsafeMutableBufferPointer { dequantize(w.matrix, row: r, into: $0.baseAddress!) }
                assertSameBits(got, want, "\(f.name) row \(r): \(isa) vs gguf-py")
            }
        }
    }

    // MARK: Layouts

    func testLayoutsAndNames() {
        let expect: [(DType, Int32, String, Int, Int)] = [
            (.q5_0, 6, "Q5_0", 32, 22), (.q5_1, 7, "Q5_1", 32, 24), (.q2_k, 10, "Q2_K", 256, 84),
            (.q3_k, 11, "Q3_K", 256, 110), (.q4_k, 12, "Q4_K", 256, 144), (.q5_k, 13, "Q5_K", 256, 176),
            (.q6_k, 14, "Q6_K", 256, 210), (.iq4_nl, 20, "IQ4_NL", 32, 18),
        ]
        for (dt, id, name, bs, bb) in expect {
            XCTAssertEqual(dt.rawValue, id)
            XCTAssertEqual(DType(rawValue: id), dt)
            XCTAssertEqual(dt.name, name)
            XCTAssertEqual(dt.blockSize, bs)
            XCTAssertEqual(dt.blockBytes, bb)
            for k in [0, 32, 64, 96, 128, 256, 512, 640, 896, 1536, 4864] {
                let c = Int(ck_row_bytes(dt.rawValue, Int64(k)))
                if k > 0 && k % bs == 0 {
                    XCTAssertEqual(c, k / bs * bb, "\(name) K=\(k)")
                    XCTAssertEqual(dt.rowBytes(k), c)
                } else {
                    XCTAssertEqual(c, 0, "\(name) K=\(k)")
                }
            }
        }
        XCTAssertNil(DType.q4_k.rowBytes(896))   // 3.5 super-blocks
        let names = DType.supportedNames.components(separatedBy: ", ")
        XCTAssertEqual(Set(names), Set(DType.allCases.map(\.name)))
        XCTAssertEqual(names.count, DType.allCases.count)
        XCTAssertTrue(DType.supportedNames.hasPrefix("F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0"), DType.supportedNames)
    }

    // MARK: Exact dequantization

    func testDequantizeRandomBlocksMatchesGGUFPy() throws {
        let fx = try Self.fixtures("random")
        XCTAssertEqual(Set(fx.map(\.dtype)), Set(Self.newTypes), "the fixture covers every new type")
        var levels = Set<String>()
        for f in fx { checkDequantization(f, levels: &levels) }
        print("KQuantTests: random blocks of \(fx.map(\.dtype.name).joined(separator: ", ")) exact on ISA levels \(levels.sorted())")
        try ISALevels.report("KQuantTests.testDequantizeRandomBlocksMatchesGGUFPy")
    }

    func testDequantizeRealRowsMatchesGGUFPy() throws {
        let fx = try Self.fixtures("real")
        XCTAssertTrue(Set([DType.q4_k, .q5_0, .q6_k, .q8_0]).isSubset(of: Set(fx.map(\.dtype))))
        var levels = Set<String>()
        for f in fx { checkDequantization(f, levels: &levels) }
        print("KQuantTests: \(fx.count) real tensors' rows exact on ISA levels \(levels.sorted())")
        try ISALevels.report("KQuantTests.testDequantizeRealRowsMatchesGGUFPy")
    }

    /// Scale fields at the edges (zero, -0, subnormal, the largest half) and every code: still exact and equal to
    /// the twin on every level (gguf-py's formulas are the twin's: checked on the fixtures above).
    func testEdgeScalesTwinEqualsKernels() throws {
        var rng = SplitMix64(seed: 31)
        let halves: [UInt16] = [0x0000, 0x8000, 0x0001, 0x83FF, 0x7BFF, 0xFBFF, 0x3C00, 0xBC00]
        for dt in Self.newTypes {
            let cols = dt.blockSize * 8
            let w = Self.randomWeights(dt, rows: 4, cols: cols, rng: &rng)
            let raw = w.bytes.assumingMemoryBound(to: UInt8.self)
            var i = 0
            for blk in stride(from: 0, to: w.matrix.byteCount, by: dt.blockBytes) {
                for off in Self.halfFields(dt) {
                    let h = halves[i % halves.count]
                    i += 1
                    raw[blk + off] = UInt8(h & 0xFF)
                    raw[blk + off + 1] = UInt8(h >> 8)
                }
            }
            for r in 0..<4 {
                var twin = [Float](repeating: .nan, count: cols)
                twin.withUnsafeMutableBufferPointer { dequantizeReference(w.matrix, row: r, into: $0.baseAddress!) }
                XCTAssertTrue(twin.allSatisfy(\.isFinite), dt.name)
                forEachISA { _, isa in
                    var got = [Float](repeating: .nan, count: cols)
                    got.withUnsafeMutableBufferPointer { dequantize(w.matrix, row: r, into: $0.baseAddress!) }
                    assertSameBits(got, twin, "\(dt.name) edge scales row \(r) \(isa)")
                }
            }
        }
        try ISALevels.report("KQuantTests.testEdgeScalesTwinEqualsKernels")
    }

    // MARK: Matrix products: exact against the canonical sequence

    /// ck_matmul on row ranges, n = 1...9 (fused path for small n, fused + panel and panel paths above), every ISA
    /// level: equal bit for bit to the canonical dot of the twin's weights, and never writing outside its rows.
    func testMatmulEqualsDequantizeThenCanonicalDot() throws {
        var rng = SplitMix64(seed: 32)
        var levels = Set<String>()
        for dt in Self.newTypes {
            let rows = 23, K = dt.blockSize == 256 ? 768 : 160
            let w = Self.randomWeights(dt, rows: rows, cols: K, rng: &rng)
            for n in 1...9 {
                let x = randomFloats(n * K, &rng, scale: 2)
                let want = Self.expected(w.matrix, x, n: n)
                forEachISA { _, isa in
                    levels.insert(isa)
                    for (r0, r1) in [(0, rows), (1, 6), (5, 22), (7, 8), (19, 23)] {
                        var y = [Float](repeating: .nan, count: n * rows)
                        ck_matmul(dt.rawValue, w.matrix.data, Int64(K), Int64(r0), Int64(r1), x, Int64(K), Int64(n), &y, Int64(rows))
                        for t in 0..<n {
                            assertSameBits(Array(y[(t * rows + r0)..<(t * rows + r1)]), Array(want[(t * rows + r0)..<(t * rows + r1)]),
                                           "\(dt.name) n=\(n) rows \(r0)..<\(r1) token \(t) \(isa)")
                            XCTAssertTrue(y[(t * rows)..<(t * rows + r0)].allSatisfy(\.isNaN) && y[(t * rows + r1)..<((t + 1) * rows)].allSatisfy(\.isNaN),
                                          "\(dt.name) n=\(n) \(isa): wrote outside rows \(r0)..<\(r1)")
                        }
                    }
                }
            }
        }
        print("KQuantTests: matmul exact on ISA levels \(levels.sorted())")
        try ISALevels.report("KQuantTests.testMatmulEqualsDequantizeThenCanonicalDot")
    }

    /// The real tensors' rows (Q4_K, Q5_0, Q6_K, Q8_0 from the Qwen and Gemma files): the kernels' products equal
    /// the canonical dot of gguf-py's own dequantized values.
    func testRealRowsMatmulEqualsCanonicalDotOfGGUFPyValues() throws {
        var rng = SplitMix64(seed: 33)
        for f in try Self.fixtures("real") {
            let w = RawWeights(f.dtype, rows: f.rows, cols: f.cols, bytes: f.bytes)
            for n in [1, 2, 3, 4, 5, 9] {
                let x = randomFloats(n * f.cols, &rng)
                var want = [Float](repeating: 0, count: n * f.rows)
                f.values.withUnsafeBufferPointer { vp in
                    x.withUnsafeBufferPointer { xp in
                        for t in 0..<n {
                            for o in 0..<f.rows {
                                want[t * f.rows + o] = Self.canonicalDot(vp.baseAddress! + o * f.cols, xp.baseAddress! + t * f.cols, f.cols)
                            }
                        }
                    }
                }
                forEachISA { _, isa in
                    for pool in [Self.pool1, Self.pool2] {
                        var y = [Float](repeating: .nan, count: n * f.rows)
                        x.withUnsafeBufferPointer { xp in y.withUnsafeMutableBufferPointer { matmul(w.matrix, xp.baseAddress!, rows: n, into: $0.baseAddress!, pool: pool) } }
                        assertSameBits(y, want, "\(f.name) n=\(n) \(isa) \(pool.threadCount) thread(s)")
                    }
                }
            }
        }
        try ISALevels.report("KQuantTests.testRealRowsMatmulEqualsCanonicalDotOfGGUFPyValues")
    }

    // MARK: Batch invariance

    /// A row's result does not depend on n, the token's position, its neighbours (huge unrelated activations), the
    /// thread split (matmul with 1, 2 and 3 threads on a matrix large enough to be split) or the ISA level.
    func testBatchInvarianceAndISALevelsBitIdentical() throws {
        var rng = SplitMix64(seed: 34)
        let pool3 = ThreadPool(threads: 3)
        for dt in Self.newTypes {
            let rows = 203, K = dt.blockSize == 256 ? 512 : 224
            let w = Self.randomWeights(dt, rows: rows, cols: K, rng: &rng)
            let N = 9
            let X = randomFloats(N * K, &rng, scale: 3)
            let wild = randomFloats(17 * K, &rng, scale: 1000)
            func run(_ xs: [Float], _ n: Int, _ pool: ThreadPool) -> [Float] {
                var y = [Float](repeating: .nan, count: n * rows)
                xs.withUnsafeBufferPointer { xp in y.withUnsafeMutableBufferPointer { matmul(w.matrix, xp.baseAddress!, rows: n, into: $0.baseAddress!, pool: pool) } }
                return y
            }
            func token(_ t: Int) -> ArraySlice<Float> { X[(t * K)..<((t + 1) * K)] }
            var baseline: [[Float]]? = nil
            forEachISA { _, isa in
                let base: [[Float]] = (0..<N).map { t in run(Array(token(t)), 1, Self.pool1) }
                if let b = baseline {
                    for t in 0..<N { assertSameBits(base[t], b[t], "\(dt.name) token \(t): \(isa) vs the scalar level") }
                } else {
                    baseline = base
                }
                for n in [2, 3, 4, 5, 8, 9, 17] {
                    for start in [0, 4] {
                        let ids = (0..<n).map { (start + $0 * 5) % N }
                        let xs = ids.flatMap { token($0) }
                        for pool in [Self.pool1, Self.pool2, pool3] {
                            let y = run(xs, n, pool)
                            for (i, t) in ids.enumerated() {
                                assertSameBits(Array(y[(i * rows)..<((i + 1) * rows)]), base[t],
                                               "\(dt.name) \(isa): token \(t) at \(i) of \(n), \(pool.threadCount) thread(s)")
                            }
                        }
                    }
                    let pos = n / 2
                    var xs = Array(wild[0..<(n * K)])
                    xs.replaceSubrange((pos * K)..<((pos + 1) * K), with: token(0))
                    let y = run(xs, n, Self.pool2)
                    assertSameBits(Array(y[(pos * rows)..<((pos + 1) * rows)]), base[0], "\(dt.name) \(isa): wild neighbours, n=\(n)")
                }
            }
        }
        try ISALevels.report("KQuantTests.testBatchInvarianceAndISALevelsBitIdentical")
    }

    // MARK: Quantizers

    /// ck_quantize_row makes valid blocks whose values approximate the input: relative RMS error below what the
    /// code width allows (measured on these seeded rows: about 2/3 of each bound), and the twin reads them as the
    /// kernels do.
    func testQuantizeRowRoundTrips() {
        var rng = SplitMix64(seed: 35)
        let bounds: [DType: Double] = [.q5_0: 0.045, .q5_1: 0.04, .iq4_nl: 0.1, .q2_k: 0.4, .q3_k: 0.2,
                                       .q4_k: 0.085, .q5_k: 0.04, .q6_k: 0.025]
        for dt in Self.newTypes {
            let rows = 3, K = 1024
            var src = [Float](repeating: 0, count: rows * K)
            for r in 0..<rows {
                let s = Float.random(in: 0.01...3, using: &rng), off = Float.random(in: -0.3...0.3, using: &rng) * s
                for k in 0..<K { src[r * K + k] = Float.random(in: -s...s, using: &rng) + off }
            }
            var bytes = [UInt8](repeating: 0, count: dt.rowBytes(K)! * rows)
            for r in 0..<rows {
                src.withUnsafeBufferPointer { sp in bytes.withUnsafeMutableBytes { ck_quantize_row(dt.rawValue, sp.baseAddress! + r * K, $0.baseAddress! + r * dt.rowBytes(K)!, Int64(K)) } }
            }
            let w = RawWeights(dt, rows: rows, cols: K, bytes: bytes)
            var back = [Float](repeating: 0, count: rows * K), twin = back
            back.withUnsafeMutableBufferPointer { dequantizeAll(w.matrix, into: $0.baseAddress!) }
            for r in 0..<rows { twin.withUnsafeMutableBufferPointer { dequantizeReference(w.matrix, row: r, into: $0.baseAddress! + r * K) } }
            assertSameBits(back, twin, "\(dt.name) quantized blocks: kernels vs twin")
            var err = 0.0, ref = 0.0
            for i in src.indices { err += Double(back[i] - src[i]) * Double(back[i] - src[i]); ref += Double(src[i]) * Double(src[i]) }
            let rel = (err / ref).squareRoot()
            XCTAssertLessThan(rel, bounds[dt]!, "\(dt.name) relative RMS error")
            print(String(format: "KQuantTests: ck_quantize_row %@ relative RMS error %.4f", dt.name, rel))
        }
    }
}
