import XCTest
import Foundation
import CausalKernels
import CCausalKernels

/// Deterministic generator (SplitMix64) so failures reproduce.
struct SplitMix64: RandomNumberGenerator {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

/// A weight matrix with its own storage.
final class OwnedWeights {
    let bytes: UnsafeMutableRawPointer
    let matrix: WeightMatrix
    init(_ dtype: DType, rows: Int, cols: Int, rng: inout SplitMix64, scale: Float = 1) {
        let rb = dtype.rowBytes(cols)!
        bytes = .allocate(byteCount: max(1, rb * rows), alignment: 64)
        var src = [Float](repeating: 0, count: cols)
        for r in 0..<rows {
            // Rows of different magnitudes and an offset, so Q4_1's minimum and every scale matter.
            let s = scale * Float.random(in: 0.1...2, using: &rng)
            let off = Float.random(in: -0.3...0.3, using: &rng) * s
            for k in 0..<cols { src[k] = Float.random(in: -s...s, using: &rng) + off }
            let dst = bytes + r * rb
            switch dtype {
            case .f32: dst.copyMemory(from: src, byteCount: 4 * cols)
            case .f16:
                let d = dst.assumingMemoryBound(to: UInt16.self)
                for k in 0..<cols { d[k] = ck_float_to_half(src[k]) }
            case .bf16:
                let d = dst.assumingMemoryBound(to: UInt16.self)
                for k in 0..<cols { d[k] = ck_float_to_bf16(src[k]) }
            case .q8_0: ck_quantize_row_q8_0(src, dst, Int64(cols))
            case .q4_0: ck_quantize_row_q4_0(src, dst, Int64(cols))
            case .q4_1: ck_quantize_row_q4_1(src, dst, Int64(cols))
            default: ck_quantize_row(dtype.rawValue, src, dst, Int64(cols))
            }
        }
        matrix = WeightMatrix(dtype: dtype, data: UnsafeRawPointer(bytes), rows: rows, cols: cols)
    }
    deinit { bytes.deallocate() }
}

func randomFloats(_ n: Int, _ rng: inout SplitMix64, scale: Float = 1) -> [Float] {
    (0..<n).map { _ in Float.random(in: -scale...scale, using: &rng) }
}

/// The ISA levels the kernels have (ck_isa), and which of them this run can force with ck_set_isa.
/// `CAUSAL_TEST_MAX_ISA=N` lowers the best level the tests use (to see the skip path on a CPU that has them all).
enum ISALevels {
    static let names = ["scalar", "avx2", "avx512"]
    /// The best level the tests use: the CPU's (ck_cpu_isa), or lower if CAUSAL_TEST_MAX_ISA says so.
    static var best: Int32 {
        let cpu = ck_cpu_isa()
        if let s = ProcessInfo.processInfo.environment["CAUSAL_TEST_MAX_ISA"], let cap = Int32(s) { return max(0, min(cpu, cap)) }
        return cpu
    }
    static var available: [Int32] { Array(0...best) }
    static var missing: [String] { Array(names[Int(best + 1)...]) }

    /// Forces `level` and checks that ck_set_isa did not clamp it (it clamps to what the CPU has; a clamped level
    /// would run another level's code under this level's name). Returns whether the level is in force.
    @discardableResult
    static func force(_ level: Int32, file: StaticString = #filePath, line: UInt = #line) -> Bool {
        let got = ck_set_isa(level)
        XCTAssertEqual(got, level, "ck_set_isa(\(level)) returned \(got): the level is not available", file: file, line: line)
        XCTAssertEqual(ck_get_isa(), got, file: file, line: line)
        return got == level
    }

    /// Call at the end of a test that compares ISA levels: prints the levels that ran and, where a level the kernels
    /// have is missing on this CPU, throws XCTSkip so that the comparison is reported as skipped, not passed
    /// (assertions made before still count).
    static func report(_ test: String, ran: [Int32]? = nil) throws {
        let ranNames = (ran ?? available).map { names[Int($0)] }
        print("[isa] \(test): ran \(ranNames.joined(separator: ", "))" + (missing.isEmpty ? "" : "; skipped \(missing.joined(separator: ", ")) (not available)"))
        if !missing.isEmpty {
            throw XCTSkip("\(test): \(missing.joined(separator: ", ")) not available on this CPU; compared only \(ranNames.joined(separator: ", "))")
        }
    }
}

/// Runs body once per ISA level this CPU supports (forced with ck_set_isa, its clamped return checked), then
/// restores the default. Tests that compare levels end with `try ISALevels.report(...)`.
func forEachISA(_ body: (Int32, String) -> Void) {
    defer { ck_set_isa(-1) }
    for level in ISALevels.available {
        guard ISALevels.force(level) else { continue }
        body(level, String(cString: ck_isa_name()))
    }
}

/// Bitwise equality of two float arrays, reporting the first difference concisely.
func assertSameBits(_ a: [Float], _ b: [Float], _ message: @autoclosure () -> String, file: StaticString = #filePath, line: UInt = #line) {
    guard a.count == b.count else { return XCTFail("\(message()): \(a.count) vs \(b.count) elements", file: file, line: line) }
    let diffs = a.indices.filter { a[$0].bitPattern != b[$0].bitPattern }
    if let i = diffs.first {
        XCTFail("\(message()): \(diffs.count) of \(a.count) differ, first [\(i)]: \(a[i]) vs \(b[i])", file: file, line: line)
    }
}

final class MatMulTests: XCTestCase {
    static let pool1 = ThreadPool(threads: 1)
    static let pool2 = ThreadPool(threads: 2)

    /// Column counts exercising each type: quantized types need multiples of 32; the float types also get a
    /// K that is not a multiple of 16 (the masked tail chunk); K-quants need multiples of 256.
    func colsFor(_ dt: DType) -> [Int] { dt.blockSize == 256 ? [256, 512] : dt.isQuantized ? [96, 160] : [100, 160] }

    // MARK: Layouts and conversions

    func testDTypeLayouts() {
        for dt in DType.allCases {
            for k in [0, 1, 16, 31, 32, 64, 100, 576] {
                let c = ck_row_bytes(dt.rawValue, Int64(k))
                if let rb = dt.rowBytes(k), k > 0 { XCTAssertEqual(rb, Int(c), "\(dt.name) K=\(k)") } else { XCTAssertEqual(c, 0) }
            }
        }
        XCTAssertEqual(DType.q4_1.rowBytes(576), 18 * 20)
        XCTAssertEqual(DType.q8_0.rowBytes(64), 68)
        XCTAssertNil(DType.q4_0.rowBytes(48))
        XCTAssertEqual(DType.q4_1.name, "Q4_1")
        XCTAssertEqual(DType.bf16.name, "BF16")
        XCTAssertEqual(DType(rawValue: 8), .q8_0)
        XCTAssertEqual(ck_row_bytes(9, 32), 0)  // Q8_1: not a weight type here
    }

    func testHalfConversionIsExactAndRoundsToNearestEven() {
        // Every half: decoding agrees with Swift's independent decoder and re-encoding gives the same half.
        for h in 0...UInt16.max {
            let f = ck_half_to_float(h)
            let e = (h >> 10) & 0x1F, m = h & 0x3FF
            if e == 31 && m != 0 { XCTAssertTrue(f.isNaN); XCTAssertTrue(ck_float_to_half(f) & 0x7FFF > 0x7C00); continue }
            let sign: Float = h & 0x8000 != 0 ? -1 : 1
            let expected: Float = e == 0 ? sign * Float(m) * 0x1p-24
                : e == 31 ? sign * .infinity
                : sign * Float(sign: .plus, exponent: Int(e) - 25, significand: Float(1024 + Int(m)))
            XCTAssertEqual(f.bitPattern, expected.bitPattern, "half \(h)")
            XCTAssertEqual(ck_float_to_half(f), h, "half \(h)")
        }
        XCTAssertEqual(ck_float_to_half(65519), 0x7BFF)         // rounds down to 65504
        XCTAssertEqual(ck_float_to_half(65520), 0x7C00)         // tie, 65504 is odd: up to inf
        XCTAssertEqual(ck_float_to_half(0x1p-25), 0)             // tie between 0 and 2^-24: even
        XCTAssertEqual(ck_float_to_half(0x1.8p-24), 2)           // tie between 1 and 2 (x 2^-24): even
        XCTAssertEqual(ck_float_to_half(0x1.000002p-25), 1)      // just above the tie
        XCTAssertEqual(ck_float_to_half(-0.0), 0x8000)
        XCTAssertEqual(ck_float_to_half(1 + 0x1p-11), 0x3C00)    // tie: to even (1.0)
        XCTAssertEqual(ck_float_to_half(1 + 0x1.8p-11), 0x3C01)
        XCTAssertEqual(ck_float_to_half(0x1.ffcp-15), 0x0400)   // rounds up to the smallest normal
        #if !(os(macOS) && arch(x86_64))
        var rng = SplitMix64(seed: 7)
        for _ in 0..<200_000 {
            let f = Float(bitPattern: UInt32.random(in: 0...UInt32.max, using: &rng))
            guard !f.isNaN else { continue }
            XCTAssertEqual(ck_float_to_half(f), Float16(f).bitPattern, "\(f)")
        }
        #endif
        XCTAssertEqual(ck_bf16_to_float(0x3F80), 1)
        XCTAssertEqual(ck_float_to_bf16(1 + 0x1p-8), 0x3F80)     // tie: to even
        XCTAssertEqual(ck_float_to_bf16(1 + 0x1.8p-8), 0x3F81)   // 0.75 ulp: up
        XCTAssertEqual(ck_float_to_bf16(1 + 0x1.8p-7), 0x3F82)   // tie at 1.5 ulp: to even
    }

    func testDequantizeMatchesSwiftReferenceBitwise() {
        var rng = SplitMix64(seed: 1)
        for dt in DType.allCases {
            let cols = colsFor(dt).last!
            let w = OwnedWeights(dt, rows: 5, cols: cols, rng: &rng)
            var ref = [Float](repeating: 0, count: cols)
            for r in 0..<5 {
                ref.withUnsafeMutableBufferPointer { dequantizeReference(w.matrix, row: r, into: $0.baseAddress!) }
                forEachISA { _, isa in
                    var got = [Float](repeating: .nan, count: cols)
                    got.withUnsafeMutableBufferPointer { dequantize(w.matrix, row: r, into: $0.baseAddress!) }
                    assertSameBits(got, ref, "\(dt.name) row \(r) \(isa)")
                }
            }
        }
        // Quantizers round-trip within half a step.
        let src = randomFloats(64, &rng)
        var q = [UInt8](repeating: 0, count: 68)
        ck_quantize_row_q8_0(src, &q, 64)
        var back = [Float](repeating: 0, count: 64)
        ck_dequantize_row(DType.q8_0.rawValue, q, &back, 64)
        for i in 0..<64 { XCTAssertEqual(back[i], src[i], accuracy: 0.51 / 127 * 1.01) }
    }

    // MARK: Accuracy

    /// The fast kernel accumulates in fp32: per (token, row), each of 16 lanes performs m = ceil(K/16) fused
    /// multiply-adds (one rounding each), then 4 additions combine the lanes. The classical bound for a sum
    /// computed with p roundings per path gives |fast - exact| <= gamma(m + 4) * sum_k |w_k x_k|,
    /// gamma(p) = p·u/(1 - p·u), u = 2^-24. The reference sums in Double and rounds once (<= u·|exact|, and
    /// |exact| <= sum|w x|), so |fast - ref| <= gamma(m + 5) * sum_k |w_k x_k|: a worst-case bound, not a guess.
    /// (Both sides multiply the same fp32 weight values — the Swift and C dequantizers agree bitwise — so the
    /// weights add nothing.)
    func checkAgainstReference(_ w: WeightMatrix, _ x: [Float], n: Int, _ got: [Float], _ label: String) {
        let K = w.cols
        var ref = [Float](repeating: 0, count: n * w.rows)
        x.withUnsafeBufferPointer { xp in ref.withUnsafeMutableBufferPointer { matmulReference(w, xp.baseAddress!, rows: n, into: $0.baseAddress!) } }
        var wf = [Float](repeating: 0, count: w.rows * K)
        wf.withUnsafeMutableBufferPointer { dequantizeAll(w, into: $0.baseAddress!) }
        let p = Double((K + 15) / 16 + 5), u = 0x1p-24
        let gamma = p * u / (1 - p * u)
        var worstRatio = 0.0
        for t in 0..<n {
            for o in 0..<w.rows {
                var absSum = 0.0
                for k in 0..<K { absSum += abs(Double(wf[o * K + k]) * Double(x[t * K + k])) }
                let bound = gamma * absSum + Double(Float.leastNonzeroMagnitude)
                let err = abs(Double(got[t * w.rows + o]) - Double(ref[t * w.rows + o]))
                worstRatio = max(worstRatio, err / bound)
                if err > bound {
                    XCTFail("\(label): y[\(t)][\(o)] = \(got[t * w.rows + o]), reference \(ref[t * w.rows + o]), error \(err) > bound \(bound)")
                    return
                }
            }
        }
        XCTAssertLessThanOrEqual(worstRatio, 1, label)
    }

    func testMatmulAgreesWithReference() {
        var rng = SplitMix64(seed: 2)
        for dt in DType.allCases {
            for K in colsFor(dt) {
                let rows = 37, n = 7
                let w = OwnedWeights(dt, rows: rows, cols: K, rng: &rng)
                let x = randomFloats(n * K, &rng, scale: 2)
                forEachISA { _, isa in
                    var y = [Float](repeating: .nan, count: n * rows)
                    x.withUnsafeBufferPointer { xp in y.withUnsafeMutableBufferPointer { matmul(w.matrix, xp.baseAddress!, rows: n, into: $0.baseAddress!, pool: Self.pool2) } }
                    checkAgainstReference(w.matrix, x, n: n, y, "\(dt.name) K=\(K) \(isa)")
                }
            }
        }
    }

    /// Every ISA level performs the same IEEE operations in the same order, so the results agree bitwise
    /// (and, a fortiori, within the reference tolerance, checked above for each level).
    func testISALevelsAgree() throws {
        var rng = SplitMix64(seed: 3)
        for dt in DType.allCases {
            for K in colsFor(dt) {
                let rows = 29, n = 9
                let w = OwnedWeights(dt, rows: rows, cols: K, rng: &rng)
                let x = randomFloats(n * K, &rng)
                var results: [(String, [Float])] = []
                forEachISA { _, isa in
                    var y = [Float](repeating: .nan, count: n * rows)
                    x.withUnsafeBufferPointer { xp in y.withUnsafeMutableBufferPointer { matmul(w.matrix, xp.baseAddress!, rows: n, into: $0.baseAddress!, pool: Self.pool1) } }
                    results.append((isa, y))
                }
                for (isa, y) in results.dropFirst() {
                    assertSameBits(y, results[0].1, "\(dt.name) K=\(K): \(isa) vs \(results[0].0)")
                    for i in y.indices { XCTAssertEqual(y[i], results[0].1[i], accuracy: 1e-5 * max(1, abs(y[i]))) }
                }
            }
        }
        try ISALevels.report("MatMulTests.testISALevelsAgree")
    }

    // MARK: Batch invariance

    func testBatchInvarianceBitwise() {
        var rng = SplitMix64(seed: 4)
        let rows = 203  // not a multiple of any tile
        let pool1 = Self.pool1, pool2 = Self.pool2
        for dt in DType.allCases {
            for K in colsFor(dt) {
                let w = OwnedWeights(dt, rows: rows, cols: K, rng: &rng)
                let N = 17
                let X = randomFloats(N * K, &rng, scale: 3)
                let wild = randomFloats(40 * K, &rng, scale: 1000)  // unrelated neighbours of a very different size
                forEachISA { _, isa in
                    let label = "\(dt.name) K=\(K) \(isa)"
                    func run(_ xs: [Float], _ n: Int, _ pool: ThreadPool) -> [Float] {
                        var y = [Float](repeating: .nan, count: n * rows)
                        xs.withUnsafeBufferPointer { xp in y.withUnsafeMutableBufferPointer { matmul(w.matrix, xp.baseAddress!, rows: n, into: $0.baseAddress!, pool: pool) } }
                        return y
                    }
                    func token(_ t: Int) -> ArraySlice<Float> { X[(t * K)..<((t + 1) * K)] }
                    // Baseline: each token alone (n = 1), one thread.
                    let base: [[Float]] = (0..<N).map { t in run(Array(token(t)), 1, pool1) }

                    // Batches of n tokens starting at several offsets (each token lands at many positions).
                    for n in [1, 2, 3, 4, 5, 8, 16, 17, 33] {
                        for start in [0, 3, 9, 16] {
                            let ids = (0..<n).map { (start + $0 * 5) % N }
                            let xs = ids.flatMap { token($0) }
                            for pool in [pool1, pool2] {
                                let y = run(xs, n, pool)
                                for (i, t) in ids.enumerated() {
                                    assertSameBits(Array(y[(i * rows)..<((i + 1) * rows)]), base[t],
                                                   "\(label): token \(t) at position \(i) of \(n), \(pool.threadCount) thread(s)")
                                }
                            }
                        }
                        // Token 0 at every position, surrounded by unrelated huge activations.
                        for pos in Set([0, n / 2, n - 1]) {
                            var xs = Array(wild[0..<(n * K)])
                            xs.replaceSubrange((pos * K)..<((pos + 1) * K), with: token(0))
                            let y = run(xs, n, pool2)
                            assertSameBits(Array(y[(pos * rows)..<((pos + 1) * rows)]), base[0], "\(label): wild neighbours, n=\(n) pos=\(pos)")
                        }
                    }

                    // Row ranges split at arbitrary (non-tile) boundaries, and strided x / y.
                    let n = 17, ldx = K + 7, ldy = rows + 3
                    var xs = [Float](repeating: .nan, count: n * ldx)
                    for t in 0..<n { xs.replaceSubrange((t * ldx)..<(t * ldx + K), with: token(t)) }
                    var y = [Float](repeating: .nan, count: n * ldy)
                    let cuts = [0, 1, 5, 6, 77, 190, rows]
                    for c in 0..<(cuts.count - 1) {
                        ck_matmul(dt.rawValue, w.matrix.data, Int64(K), Int64(cuts[c]), Int64(cuts[c + 1]), xs, Int64(ldx), Int64(n), &y, Int64(ldy))
                    }
                    for t in 0..<n {
                        assertSameBits(Array(y[(t * ldy)..<(t * ldy + rows)]), base[t], "\(label): row split, token \(t)")
                        XCTAssertTrue(y[(t * ldy + rows)..<((t + 1) * ldy)].allSatisfy(\.isNaN), "\(label): wrote outside its rows")
                    }
                }
            }
        }
    }

    func testOneThreadVersusTwoThreadsOnALargerMatrix() {
        var rng = SplitMix64(seed: 5)
        for dt in DType.allCases {
            let rows = 1000, K = 256, n = 6   // large enough that matmul really splits the rows
            let w = OwnedWeights(dt, rows: rows, cols: K, rng: &rng)
            let x = randomFloats(n * K, &rng)
            var y1 = [Float](repeating: 0, count: n * rows), y2 = y1, y3 = y1
            x.withUnsafeBufferPointer { xp in
                y1.withUnsafeMutableBufferPointer { matmul(w.matrix, xp.baseAddress!, rows: n, into: $0.baseAddress!, pool: Self.pool1) }
                y2.withUnsafeMutableBufferPointer { matmul(w.matrix, xp.baseAddress!, rows: n, into: $0.baseAddress!, pool: Self.pool2) }
                let pool5 = ThreadPool(threads: 5)
                y3.withUnsafeMutableBufferPointer { matmul(w.matrix, xp.baseAddress!, rows: n, into: $0.baseAddress!, pool: pool5) }
            }
            assertSameBits(y1, y2, dt.name)
            assertSameBits(y1, y3, dt.name)
        }
    }

    // MARK: Edge cases

    func testEdgeCases() {
        var rng = SplitMix64(seed: 6)
        forEachISA { _, isa in
            for dt in DType.allCases {
                for rows in [1, 3, 4, 5, 17] {
                    let K = max(32, dt.blockSize)
                    let w = OwnedWeights(dt, rows: rows, cols: K, rng: &rng)
                    for n in [1, 4, 7] {
                        let x = randomFloats(n * K, &rng)
                        var y = [Float](repeating: .nan, count: n * rows)
                        x.withUnsafeBufferPointer { xp in y.withUnsafeMutableBufferPointer { matmul(w.matrix, xp.baseAddress!, rows: n, into: $0.baseAddress!, pool: Self.pool2) } }
                        checkAgainstReference(w.matrix, x, n: n, y, "\(dt.name) K=\(K) rows=\(rows) n=\(n) \(isa)")
                    }
                    // n = 0 writes nothing.
                    var y = [Float](repeating: 42, count: rows)
                    let x = [Float](repeating: 1, count: K)
                    x.withUnsafeBufferPointer { xp in y.withUnsafeMutableBufferPointer { matmul(w.matrix, xp.baseAddress!, rows: 0, into: $0.baseAddress!, pool: Self.pool2) } }
                    XCTAssertTrue(y.allSatisfy { $0 == 42 })
                    ck_matmul(dt.rawValue, w.matrix.data, Int64(K), 2, 2, x, Int64(K), 1, &y, Int64(rows))
                    XCTAssertTrue(y.allSatisfy { $0 == 42 })
                }
            }
            // Float types with tiny K (only the masked tail), and special values pass through.
            for K in [1, 7, 15, 16, 17] {
                let w = OwnedWeights(.f32, rows: 3, cols: K, rng: &rng)
                let x = randomFloats(2 * K, &rng)
                var y = [Float](repeating: .nan, count: 6)
                x.withUnsafeBufferPointer { xp in y.withUnsafeMutableBufferPointer { matmul(w.matrix, xp.baseAddress!, rows: 2, into: $0.baseAddress!, pool: Self.pool1) } }
                checkAgainstReference(w.matrix, x, n: 2, y, "F32 K=\(K) \(isa)")
            }
            let inf: [Float] = [.infinity] + [Float](repeating: 0, count: 31)
            let one = OwnedWeights(.f32, rows: 1, cols: 32, rng: &rng)
            var y: Float = 0
            ck_matmul(DType.f32.rawValue, one.matrix.data, 32, 0, 1, inf, 32, 1, &y, 1)
            XCTAssertTrue(y.isInfinite || y.isNaN)
        }
    }

    // MARK: Thread pool

    func testThreadPoolRunsEveryIndexOnce() {
        for threads in [1, 2, 3, 8] {
            let pool = ThreadPool(threads: threads)
            XCTAssertEqual(pool.threadCount, threads)
            for count in [0, 1, 2, 3, 100, 10_000] {
                let hits = UnsafeMutablePointer<Int>.allocate(capacity: max(count, 1))
                hits.initialize(repeating: 0, count: max(count, 1))
                pool.parallelFor(count) { hits[$0] += 1 }
                XCTAssertTrue((0..<count).allSatisfy { hits[$0] == 1 }, "threads=\(threads) count=\(count)")
                hits.deallocate()
            }
        }
        XCTAssertGreaterThanOrEqual(ThreadPool.shared.threadCount, 1)
    }

    func testThreadPoolNestedAndConcurrentCallers() {
        let pool = ThreadPool(threads: 3)
        // Nested: the inner call runs inline.
        let cells = UnsafeMutablePointer<Int>.allocate(capacity: 64)
        cells.initialize(repeating: 0, count: 64)
        pool.parallelFor(8) { i in pool.parallelFor(8) { j in cells[i * 8 + j] += 1 } }
        XCTAssertTrue((0..<64).allSatisfy { cells[$0] == 1 })
        cells.deallocate()
        // Several threads calling at once: serialized, each sees its own job complete.
        let callers = 4, rounds = 200, count = 37
        let sums = UnsafeMutablePointer<Int>.allocate(capacity: callers * count)
        sums.initialize(repeating: 0, count: callers * count)
        DispatchQueue.concurrentPerform(iterations: callers) { c in
            for _ in 0..<rounds { pool.parallelFor(count) { i in sums[c * count + i] += 1 } }
        }
        XCTAssertTrue((0..<(callers * count)).allSatisfy { sums[$0] == rounds })
        sums.deallocate()
    }

    func testThreadPoolOverhead() {
        // Reported, not asserted: the cost of an (almost) empty parallelFor on the shared pool.
        let pool = ThreadPool(threads: 2)
        let sink = UnsafeMutablePointer<Int>.allocate(capacity: 2)
        sink.initialize(repeating: 0, count: 2)
        for _ in 0..<1000 { pool.parallelFor(2) { sink[$0] &+= 1 } }
        let calls = 20_000
        let t0 = DispatchTime.now().uptimeNanoseconds
        for _ in 0..<calls { pool.parallelFor(2) { sink[$0] &+= 1 } }
        let dt = Double(DispatchTime.now().uptimeNanoseconds - t0) / Double(calls)
        print("ThreadPool(2).parallelFor(2) overhead: \(String(format: "%.2f", dt / 1000)) µs per call")
        XCTAssertEqual(sink[0], 21_000)
        sink.deallocate()
    }

    // MARK: Speed (manual, prints only). `CK_BENCH=1 swift test -c release --filter testSpeedReport`;
    // optional CK_ISA=0|1|2 and CK_THREADS=n.

    func testSpeedReport() throws {
        guard ProcessInfo.processInfo.environment["CK_BENCH"] != nil else { throw XCTSkip("set CK_BENCH=1 to measure") }
        var rng = SplitMix64(seed: 9)
        let env = ProcessInfo.processInfo.environment
        if let level = env["CK_ISA"].flatMap(Int32.init) { ck_set_isa(level) }  // 0 scalar, 1 avx2, 2 avx512
        defer { ck_set_isa(-1) }
        let pool = ThreadPool(threads: env["CK_THREADS"].flatMap(Int.init) ?? ProcessInfo.processInfo.activeProcessorCount)
        print("ISA \(String(cString: ck_isa_name())), \(pool.threadCount) threads")
        for (dt, rows, K) in [(DType.q4_1, 1536, 576), (DType.q8_0, 49152, 576), (DType.q4_1, 49152, 576), (DType.f32, 1536, 576), (DType.q4_0, 1536, 576)] {
            let w = OwnedWeights(dt, rows: rows, cols: K, rng: &rng)
            for n in [1, 8, 64, 512] {
                let x = randomFloats(n * K, &rng)
                var y = [Float](repeating: 0, count: n * rows)
                let flops = 2.0 * Double(n * rows * K)
                let reps = max(1, Int(2e7 / flops))  // a sample is at least one call and ~2e7 FLOP
                var best = Double.infinity
                x.withUnsafeBufferPointer { xp in
                    y.withUnsafeMutableBufferPointer { yp in
                        for _ in 0..<2 { matmul(w.matrix, xp.baseAddress!, rows: n, into: yp.baseAddress!, pool: pool) }
                        for _ in 0..<25 {  // best of 25: this machine is shared
                            let t0 = DispatchTime.now().uptimeNanoseconds
                            for _ in 0..<reps { matmul(w.matrix, xp.baseAddress!, rows: n, into: yp.baseAddress!, pool: pool) }
                            best = min(best, Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9 / Double(reps))
                        }
                    }
                }
                let gbs = Double(w.matrix.byteCount) / best / 1e9
                print(String(format: "%@ rows=%5d K=%d n=%3d: %8.1f µs  %6.1f GFLOP/s  weights %6.1f GB/s",
                             dt.name, rows, K, n, best * 1e6, flops / best / 1e9, gbs))
            }
        }
    }
}
