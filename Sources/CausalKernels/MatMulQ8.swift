import CCausalKernels

// Opt-in int8 activations for products with quantized weights (ck_q8.h): each token's activations are quantized
// per 32-element block to int8 with one fp32 scale, multiplied with the weight codes by exact integer dot
// products, and scaled and accumulated in fp32 in a fixed order. Results are bitwise identical on every ISA level
// and independent of the batch, the row split and the thread count, like the fp32 path's; they are not equal to
// the fp32 path's (the activations are rounded to 8 bits), so it is never the default.

/// The precision of the activations in products with quantized weights, process-wide.
///
/// `.fp32` (the default) multiplies dequantized weights with fp32 activations. `.int8` makes `matmul` quantize the
/// activations of each token to int8 (per 32-element block, one fp32 scale) for the weight types of
/// `ActivationPrecision.int8Types`; other types, and F32/F16/BF16 weights (so `--precision reference`, which
/// dequantizes every weight to F32), stay fp32. The initial value comes from the environment variable
/// `CAUSAL_ACTIVATIONS` (`int8` or `fp32`).
public enum ActivationPrecision: String, Sendable, CaseIterable {
    case fp32, int8

    /// The process-wide setting that `matmul` consults on every call.
    public static var current: ActivationPrecision {
        get { ck_activation_precision() == Int32(CK_ACTIVATIONS_INT8.rawValue) ? .int8 : .fp32 }
        set { ck_set_activation_precision(Int32(newValue == .int8 ? CK_ACTIVATIONS_INT8.rawValue : CK_ACTIVATIONS_FP32.rawValue)) }
    }

    /// The weight types the int8 path computes with: Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, IQ4_NL, Q4_K, Q5_K, Q6_K.
    public static var int8Types: [DType] { DType.allCases.filter { ck_q8_supports($0.rawValue) != 0 } }

    /// Runs `body` with `current` set to `precision`, then restores the previous value (process-wide: not for
    /// concurrent use with other settings).
    public static func with<T>(_ precision: ActivationPrecision, _ body: () throws -> T) rethrows -> T {
        let saved = current
        current = precision
        defer { current = saved }
        return try body()
    }
}

/// y = x · wᵀ with int8 activations (see `ActivationPrecision`): `x` is (n, w.cols) row-major fp32, `y` is
/// (n, w.rows). Returns false, writing nothing, when `w.dtype` is not one of `ActivationPrecision.int8Types`.
/// Rows are split across `pool` as `matmul` splits them; the results do not depend on the split.
@discardableResult
public func matmulQ8(_ w: WeightMatrix, _ x: UnsafePointer<Float>, rows n: Int, into y: UnsafeMutablePointer<Float>,
                     pool: ThreadPool) -> Bool {
    let type = w.dtype.rawValue, K = w.cols
    guard ck_q8_supports(type) != 0, K > 0, K % 32 == 0 else { return false }
    guard n > 0, w.rows > 0 else { return true }
    let threads = pool.threadCount
    let xq = QuantizedInput(x, K: K, rows: n, pool: pool)
    let rowsPerChunk = chunkRows(w, tokens: n, threads: threads)
    let chunks = (w.rows + rowsPerChunk - 1) / rowsPerChunk
    if chunks == 1 {
        xq.productRows(w, 0, w.rows, into: y)
    } else {
        pool.parallelFor(chunks) { c in
            let r0 = c * rowsPerChunk
            xq.productRows(w, r0, min(w.rows, r0 + rowsPerChunk), into: y)
        }
    }
    return true
}

/// n rows of K activations quantized for the int8 path (n × `ck_q8_row_bytes(K)` bytes), each row on its own (its
/// bytes depend on that row only), spread over the pool when there are many. The lane-major copy is written only
/// when a product of all n tokens reads it (n >= 3).
final class QuantizedInput {
    let K: Int, n: Int, rowBytes: Int
    let bytes: UnsafeMutableRawPointer

    init(_ x: UnsafePointer<Float>, K: Int, rows n: Int, pool: ThreadPool) {
        let threads = pool.threadCount, xs = ck_q8_row_bytes(Int64(K))
        self.K = K; self.n = n; rowBytes = xs
        let xq = UnsafeMutableRawPointer.allocate(byteCount: max(n * xs, 1), alignment: 64)
        bytes = xq
        if threads == 1 || n < 8 {
            ck_quantize_activations_q8_rows_for(x, Int64(K), Int64(n), Int64(K), xq, Int64(n))
        } else {
            let per = (n + threads * 2 - 1) / (threads * 2)
            pool.parallelFor((n + per - 1) / per) { c in
                let t0 = c * per, t1 = min(n, t0 + per)
                ck_quantize_activations_q8_rows_for(x + t0 * K, Int64(K), Int64(t1 - t0), Int64(K), xq + t0 * xs, Int64(n))
            }
        }
    }
    deinit { bytes.deallocate() }

    /// Rows [r0, r1) of y = x · wᵀ (w one of `ActivationPrecision.int8Types`, w.cols == K), the tokens in blocks whose
    /// quantized activations (about 1.5 bytes per value) stay in the core's cache while the weight rows stream past;
    /// blocking never changes a (token, row) pair's arithmetic.
    func productRows(_ w: WeightMatrix, _ r0: Int, _ r1: Int, into y: UnsafeMutablePointer<Float>) {
        let tokenBlock = max(16, min(n, (1 << 20) / max(rowBytes, 1)))
        var t0 = 0
        while t0 < n {
            let nb = min(tokenBlock, n - t0)
            ck_matmul_q8(w.dtype.rawValue, w.data, Int64(K), Int64(r0), Int64(r1), bytes + t0 * rowBytes, Int64(nb),
                         y + t0 * w.rows, Int64(w.rows))
            t0 += nb
        }
    }
}


/// The int8 path's quantized activations of one row, decoded from the layout of ck_q8.h: the codes of each
/// 32-element block in block order, the block scales, the block and half-block sums and the scaled sums
/// (scale x block sum, one fp32 product). For tests and tools.
public struct QuantizedActivations: Equatable, Sendable {
    public var codes: [Int8]
    public var scales: [Float]
    public var blockSums: [Int32]
    public var halfSums: [Int32]
    public var scaledSums: [Float]

    /// Quantizes `x` (count a positive multiple of 32) with the kernels.
    public init(quantizing x: [Float]) {
        let K = x.count
        precondition(K > 0 && K % 32 == 0, "int8 activations need a positive multiple of 32 values, got \(K)")
        let xs = ck_q8_row_bytes(Int64(K))
        var buf = [UInt8](repeating: 0xAA, count: xs)
        buf.withUnsafeMutableBytes { b in x.withUnsafeBufferPointer { ck_quantize_activations_q8($0.baseAddress!, Int64(K), b.baseAddress!) } }
        self.init(layout: buf, cols: K)
    }

    /// Reads a quantized row of `cols` values from its bytes.
    public init(layout buf: [UInt8], cols K: Int) {
        let nb = K / 32, npb = (nb + 15) / 16 * 16
        let d = npb * 32, s32 = d + npb * 4, slo = s32 + npb * 4, shi = slo + npb * 4, ds = shi + npb * 4
        func u32(_ o: Int) -> UInt32 { UInt32(buf[o]) | UInt32(buf[o + 1]) << 8 | UInt32(buf[o + 2]) << 16 | UInt32(buf[o + 3]) << 24 }
        var codes = [Int8](), scales = [Float](), blockSums = [Int32](), halfSums = [Int32](), scaledSums = [Float]()
        for b in 0..<nb {
            let g = b / 16, q = (b % 16) / 4, i = b % 4
            for h in 0..<2 {
                let base = 512 * g + 128 * q + 64 * h + 16 * i
                for l in 0..<16 { codes.append(Int8(bitPattern: buf[base + l])) }
            }
            let p = 4 * (16 * g + 4 * i + q)
            scales.append(Float(bitPattern: u32(d + p)))
            blockSums.append(Int32(bitPattern: u32(s32 + p)))
            halfSums.append(Int32(bitPattern: u32(slo + p)))
            halfSums.append(Int32(bitPattern: u32(shi + p)))
            scaledSums.append(Float(bitPattern: u32(ds + p)))
        }
        self.init(codes: codes, scales: scales, blockSums: blockSums, halfSums: halfSums, scaledSums: scaledSums)
    }

    public init(codes: [Int8], scales: [Float], blockSums: [Int32], halfSums: [Int32], scaledSums: [Float]) {
        self.codes = codes
        self.scales = scales
        self.blockSums = blockSums
        self.halfSums = halfSums
        self.scaledSums = scaledSums
    }

    /// Bitwise equality (floats compared by bit pattern, so NaN scales compare equal to themselves).
    public static func == (a: QuantizedActivations, b: QuantizedActivations) -> Bool {
        a.codes == b.codes && a.blockSums == b.blockSums && a.halfSums == b.halfSums
            && a.scales.map(\.bitPattern) == b.scales.map(\.bitPattern)
            && a.scaledSums.map(\.bitPattern) == b.scaledSums.map(\.bitPattern)
    }
}
