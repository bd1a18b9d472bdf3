import CCausalKernels

// Matrix products of weight matrices (any DType) with fp32 activations.
//
// The arithmetic is all in C (`ck_matmul`): weights are dequantized exactly to fp32 and each (token, output row)
// pair has its own fp32 accumulator whose sequence of operations is fixed by K alone, so results are bitwise
// independent of the batch (n, neighbours, position), of the thread count and of how rows are split. This file
// only splits the output rows across the pool.

/// y = x · wᵀ: `x` is (n, w.cols) row-major fp32, `y` is (n, w.rows) row-major fp32.
/// Output rows are split across `pool` in chunks whose boundaries are multiples of `ck_row_tile()`;
/// the results do not depend on the split or on the thread count.
public func matmul(_ w: WeightMatrix, _ x: UnsafePointer<Float>, rows n: Int, into y: UnsafeMutablePointer<Float>,
                   pool: ThreadPool) {
    guard n > 0, w.rows > 0 else { return }
    let K = w.cols
    guard K > 0 else { y.update(repeating: 0, count: n * w.rows); return }
    let tile = Int(ck_row_tile())
    let tiles = (w.rows + tile - 1) / tile
    let threads = pool.threadCount
    // Small products are not worth waking the workers for (the split never changes the numbers).
    let macs = n * w.rows * K
    // Several chunks per thread, claimed dynamically, so that threads finish together; more for compute-bound
    // batches (n >= 8), whose chunks are long.
    let wanted = threads == 1 || macs < 1 << 17 ? 1 : threads * (n >= 8 ? 8 : 4)
    let tilesPerChunk = (tiles + min(wanted, tiles) - 1) / min(wanted, tiles)
    let chunkRows = tilesPerChunk * tile
    let chunks = (w.rows + chunkRows - 1) / chunkRows
    let type = w.dtype.rawValue, data = w.data, rows = w.rows
    // Tokens in blocks small enough that a block of activations stays in the core's cache while every panel of
    // weight rows streams past it (a 2048-token prompt would otherwise re-read 4.7 MB of activations per panel).
    // Blocking changes which (token, row) pairs run together, never a pair's arithmetic.
    let tokenBlock = max(16, min(n, (1 << 20) / max(K * 4, 1)))
    func run(_ r0: Int, _ r1: Int) {
        var t0 = 0
        while t0 < n {
            let nb = min(tokenBlock, n - t0)
            ck_matmul(type, data, Int64(K), Int64(r0), Int64(r1), x + t0 * K, Int64(K), Int64(nb), y + t0 * rows, Int64(rows))
            t0 += nb
        }
    }
    if chunks == 1 {
        run(0, rows)
        return
    }
    pool.parallelFor(chunks) { c in
        let r0 = c * chunkRows
        run(r0, min(rows, r0 + chunkRows))
    }
}

/// The slow twin of `matmul`: Swift-side dequantization (`dequantizeReference`) and Double accumulation,
/// single-threaded, in the obvious order. For tests.
public func matmulReference(_ w: WeightMatrix, _ x: UnsafePointer<Float>, rows n: Int,
                            into y: UnsafeMutablePointer<Float>) {
    guard n > 0, w.rows > 0 else { return }
    let K = w.cols
    var row = [Float](repeating: 0, count: K)
    for o in 0..<w.rows {
        row.withUnsafeMutableBufferPointer { dequantizeReference(w, row: o, into: $0.baseAddress!) }
        for t in 0..<n {
            var s = 0.0
            for k in 0..<K { s += Double(row[k]) * Double(x[t * K + k]) }
            y[t * w.rows + o] = Float(s)
        }
    }
}

/// Writes row `row` of `w` as `w.cols` floats (the same values `matmul` multiplies with, on every ISA level).
public func dequantize(_ w: WeightMatrix, row: Int, into dst: UnsafeMutablePointer<Float>) {
    precondition(row >= 0 && row < w.rows, "row \(row) out of range 0..<\(w.rows)")
    guard w.cols > 0 else { return }
    ck_dequantize_row(w.dtype.rawValue, w.data + row * w.rowBytes, dst, Int64(w.cols))
}

/// Writes the whole matrix as (w.rows, w.cols) floats.
public func dequantizeAll(_ w: WeightMatrix, into dst: UnsafeMutablePointer<Float>) {
    guard w.cols > 0 else { return }
    for r in 0..<w.rows { dequantize(w, row: r, into: dst + r * w.cols) }
}

/// Plain-Swift dequantization of one row, written from the block layouts independently of the C code.
/// Produces the same bits as `dequantize` (every product d·q is exact in fp32; Q4_1's + m rounds once on both).
public func dequantizeReference(_ w: WeightMatrix, row: Int, into dst: UnsafeMutablePointer<Float>) {
    precondition(row >= 0 && row < w.rows, "row \(row) out of range 0..<\(w.rows)")
    let p = (w.data + row * w.rowBytes).assumingMemoryBound(to: UInt8.self)
    func u16(_ i: Int) -> UInt16 { UInt16(p[i]) | UInt16(p[i + 1]) << 8 }
    let K = w.cols
    switch w.dtype {
    case .f32:
        for i in 0..<K { dst[i] = Float(bitPattern: UInt32(u16(4 * i)) | UInt32(u16(4 * i + 2)) << 16) }
    case .f16:
        for i in 0..<K { dst[i] = halfToFloat(u16(2 * i)) }
    case .bf16:
        for i in 0..<K { dst[i] = Float(bitPattern: UInt32(u16(2 * i)) << 16) }
    case .q8_0:
        for b in 0..<K / 32 {
            let o = b * 34, d = halfToFloat(u16(o))
            for i in 0..<32 { dst[b * 32 + i] = d * Float(Int8(bitPattern: p[o + 2 + i])) }
        }
    case .q4_0:
        for b in 0..<K / 32 {
            let o = b * 18, d = halfToFloat(u16(o))
            for j in 0..<16 {
                dst[b * 32 + j] = d * Float(Int(p[o + 2 + j] & 15) - 8)
                dst[b * 32 + j + 16] = d * Float(Int(p[o + 2 + j] >> 4) - 8)
            }
        }
    case .q4_1:
        for b in 0..<K / 32 {
            let o = b * 20, d = halfToFloat(u16(o)), m = halfToFloat(u16(o + 2))
            for j in 0..<16 {
                dst[b * 32 + j] = d * Float(p[o + 4 + j] & 15) + m
                dst[b * 32 + j + 16] = d * Float(p[o + 4 + j] >> 4) + m
            }
        }
    }
}

/// IEEE binary16 → Float (exact), in Swift.
@inline(__always) func halfToFloat(_ h: UInt16) -> Float {
    let sign: Float = h & 0x8000 != 0 ? -1 : 1
    let e = Int((h >> 10) & 0x1F), m = Int(h & 0x3FF)
    switch e {
    case 0: return sign * Float(m) * 0x1p-24
    case 31: return m == 0 ? sign * .infinity : .nan
    default: return sign * Float(sign: .plus, exponent: e - 25, significand: Float(1024 + m))
    }
}
