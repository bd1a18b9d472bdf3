import CCausalKernels

// Matrix products of weight matrices (any DType) with fp32 activations.
//
// The arithmetic is all in C (`ck_matmul`): weights are dequantized exactly to fp32 and each (token, output row)
// pair has its own fp32 accumulator whose sequence of operations is fixed by K alone, so results are bitwise
// independent of the batch (n, neighbours, position), of the thread count and of how rows are split. This file
// only splits the output rows across the pool.

/// The rows of each chunk a product is cut into (claimed dynamically by the pool's threads), a multiple of
/// `ck_row_tile()`: all rows when the product is too small to wake the workers for, else several chunks per thread
/// so that the threads finish together; more for compute-bound batches (n >= 8), whose chunks are long. (Batch-1
/// decode of the Qwen2.5 1.5B with 8 or 16 chunks per thread instead of 4: no faster.)
func chunkRows(_ w: WeightMatrix, tokens n: Int, threads: Int) -> Int {
    let tile = Int(ck_row_tile())
    let tiles = (w.rows + tile - 1) / tile
    let wanted = threads == 1 || n * w.rows * w.cols < 1 << 17 ? 1 : threads * (n >= 8 ? 8 : 4)
    return (tiles + min(wanted, tiles) - 1) / min(wanted, tiles) * tile
}

/// Rows [r0, r1) of y = x · wᵀ with fp32 activations, the tokens in blocks small enough that a block of activations
/// stays in the core's cache while every panel of weight rows streams past it (a 2048-token prompt would otherwise
/// re-read 4.7 MB of activations per panel). Blocking changes which (token, row) pairs run together, never a pair's
/// arithmetic.
func productRows(_ w: WeightMatrix, _ r0: Int, _ r1: Int, _ x: UnsafePointer<Float>, tokens n: Int,
                 into y: UnsafeMutablePointer<Float>) {
    let K = w.cols, tokenBlock = max(16, min(n, (1 << 20) / max(K * 4, 1)))
    var t0 = 0
    while t0 < n {
        let nb = min(tokenBlock, n - t0)
        ck_matmul(w.dtype.rawValue, w.data, Int64(K), Int64(r0), Int64(r1), x + t0 * K, Int64(K), Int64(nb), y + t0 * w.rows, Int64(w.rows))
        t0 += nb
    }
}

/// y = x · wᵀ: `x` is (n, w.cols) row-major fp32, `y` is (n, w.rows) row-major fp32.
/// Output rows are split across `pool` in chunks whose boundaries are multiples of `ck_row_tile()`;
/// the results do not depend on the split or on the thread count.
public func matmul(_ w: WeightMatrix, _ x: UnsafePointer<Float>, rows n: Int, into y: UnsafeMutablePointer<Float>,
                   pool: ThreadPool) {
    guard n > 0, w.rows > 0 else { return }
    let K = w.cols
    guard K > 0 else { y.update(repeating: 0, count: n * w.rows); return }
    // Opt-in int8 activations (ActivationPrecision, MatMulQ8.swift) for the quantized types that path supports.
    if ck_activation_precision() != 0, matmulQ8(w, x, rows: n, into: y, pool: pool) { return }
    let threads = pool.threadCount
    // Small products are not worth waking the workers for (the split never changes the numbers).
    let split = threads > 1 && n * w.rows * K >= 1 << 17
    let rowsPerChunk = chunkRows(w, tokens: n, threads: threads)
    let chunks = (w.rows + rowsPerChunk - 1) / rowsPerChunk
    let type = w.dtype.rawValue, data = w.data, rows = w.rows
    if chunks == 1 {
        // One tile of rows (a LoRA adapter's x·Aᵀ and dy·B have 16): split the tokens instead, in blocks of at least
        // 16, so that the other threads do not wait while one runs the whole product.
        let parts = split ? min(threads * 2, n / 16) : 1
        if parts < 2 {
            productRows(w, 0, rows, x, tokens: n, into: y)
            return
        }
        let per = (n + parts - 1) / parts
        pool.parallelFor((n + per - 1) / per) { p in
            let t0 = p * per, nb = min(per, n - t0)
            ck_matmul(type, data, Int64(K), 0, Int64(rows), x + t0 * K, Int64(K), Int64(nb), y + t0 * rows, Int64(rows))
        }
        return
    }
    pool.parallelFor(chunks) { c in
        let r0 = c * rowsPerChunk
        productRows(w, r0, min(rows, r0 + rowsPerChunk), x, tokens: n, into: y)
    }
}

/// ys[i] = x · ws[i]ᵀ for every i: several products of one input (a layer's Q, K and V, or its gate and up), with
/// the bits of separate `matmul` calls. They share the work around the input: the pool is woken once for all of
/// them, their row chunks claimed from one list (so the small K and V products fill the threads' gaps instead of
/// each waiting for its slowest chunk), and on the int8 path (`ActivationPrecision`) the input is quantized once.
/// Every `ws[i]` must have `x`'s width as its `cols`.
public func matmul(_ ws: [WeightMatrix], _ x: UnsafePointer<Float>, rows n: Int, into ys: [UnsafeMutablePointer<Float>],
                   pool: ThreadPool) {
    precondition(ws.count == ys.count, "\(ws.count) matrices but \(ys.count) outputs")
    guard n > 0, let K = ws.first?.cols else { return }
    precondition(ws.allSatisfy { $0.cols == K }, "the matrices of one input must share its width")
    let threads = pool.threadCount
    // Together too small to wake the workers for: each as it is.
    let shared = threads > 1 && K > 0 && ws.reduce(0) { $0 + n * $1.rows * K } >= 1 << 17
    guard shared, ws.count > 1 else {
        for (w, y) in zip(ws, ys) { matmul(w, x, rows: n, into: y, pool: pool) }
        return
    }
    // The int8 path's quantized input, made once for every product that takes it (the bytes of a row depend on that
    // row only, so they equal what each product would make).
    let int8 = ck_activation_precision() != 0
    let q8 = ws.map { int8 && ck_q8_supports($0.dtype.rawValue) != 0 && K % 32 == 0 }
    let xq = q8.contains(true) ? QuantizedInput(x, K: K, rows: n, pool: pool) : nil
    // Row chunks of every product, as `matmul` would cut them, in one list; a product too small to split (batch-1
    // K and V of a grouped-query model) is one chunk, run beside the others' instead of before them.
    var jobs: [(w: Int, r0: Int, r1: Int)] = []
    for (i, w) in ws.enumerated() where w.rows > 0 {
        let step = chunkRows(w, tokens: n, threads: threads)
        for r0 in stride(from: 0, to: w.rows, by: step) { jobs.append((i, r0, min(w.rows, r0 + step))) }
    }
    // Longest first, so that the last chunks claimed are short ones.
    jobs.sort { ($0.r1 - $0.r0) * ws[$0.w].rowBytes > ($1.r1 - $1.r0) * ws[$1.w].rowBytes }
    pool.parallelFor(jobs.count) { j in
        let (i, r0, r1) = jobs[j]
        if q8[i], let xq {
            xq.productRows(ws[i], r0, r1, into: ys[i])
        } else {
            productRows(ws[i], r0, r1, x, tokens: n, into: ys[i])
        }
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
/// Produces the same bits as `dequantize` and as gguf-py's float32 dequantizer: the same operations in the same
/// order (the products d·q, d·sc, d·sc·q are exact in fp32 except Q6_K's (d·sc)·(q − 32); Q4_1/Q5_1's + m and the
/// K-quants' − dmin·m round once, as does that product).
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
    case .q5_0, .q5_1:
        // { d, [m,] qh: u32, qs[16] }: code = nibble + 16 * (bit of qh); Q5_0: d * (code - 16), Q5_1: d * code + m.
        let hasMin = w.dtype == .q5_1, size = hasMin ? 24 : 22
        for b in 0..<K / 32 {
            let o = b * size, d = halfToFloat(u16(o)), m: Float = hasMin ? halfToFloat(u16(o + 2)) : 0
            let h = o + (hasMin ? 4 : 2), qs = h + 4
            let qh = UInt32(u16(h)) | UInt32(u16(h + 2)) << 16
            for j in 0..<16 {
                let c0 = Int(p[qs + j] & 15) + Int((qh >> UInt32(j)) & 1) * 16
                let c1 = Int(p[qs + j] >> 4) + Int((qh >> UInt32(j + 16)) & 1) * 16
                dst[b * 32 + j] = hasMin ? d * Float(c0) + m : d * Float(c0 - 16)
                dst[b * 32 + j + 16] = hasMin ? d * Float(c1) + m : d * Float(c1 - 16)
            }
        }
    case .iq4_nl:
        let table: [Float] = [-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113]
        for b in 0..<K / 32 {
            let o = b * 18, d = halfToFloat(u16(o))
            for j in 0..<16 {
                dst[b * 32 + j] = d * table[Int(p[o + 2 + j] & 15)]
                dst[b * 32 + j + 16] = d * table[Int(p[o + 2 + j] >> 4)]
            }
        }
    case .q2_k:
        // { scales[16], qs[64], d, dmin }: two halves of 128; each takes 2 bits at shifts 0, 2, 4, 6 of 32 bytes;
        // a scale byte per 16 values (low nibble: scale, high nibble: min).
        for b in 0..<K / 256 {
            let o = b * 84, d = halfToFloat(u16(o + 80)), dmin = halfToFloat(u16(o + 82))
            var out = b * 256, group = 0
            for half in 0..<2 {
                for shift in stride(from: 0, to: 8, by: 2) {
                    for part in 0..<2 {
                        let sc = p[o + group]
                        group += 1
                        let dl = d * Float(sc & 15), ml = dmin * Float(sc >> 4)
                        for l in 0..<16 {
                            let q = (p[o + 16 + half * 32 + part * 16 + l] >> UInt8(shift)) & 3
                            dst[out] = dl * Float(q) - ml
                            out += 1
                        }
                    }
                }
            }
        }
    case .q3_k:
        // { hmask[32], qs[64], scales[12], d }: as Q2_K's 2-bit codes, minus 4 where the hmask bit is clear; 16
        // signed 6-bit scales.
        for b in 0..<K / 256 {
            let o = b * 110, d = halfToFloat(u16(o + 108))
            var scales = [Int](repeating: 0, count: 16)
            for i in 0..<16 {
                let low = i < 8 ? Int(p[o + 96 + i] & 15) : Int(p[o + 96 + i - 8] >> 4)
                let high = Int(p[o + 104 + i % 4] >> UInt8(2 * (i / 4))) & 3
                scales[i] = low + 16 * high - 32
            }
            var out = b * 256, group = 0
            var mask: UInt8 = 1
            for half in 0..<2 {
                for shift in stride(from: 0, to: 8, by: 2) {
                    for part in 0..<2 {
                        let dl = d * Float(scales[group])
                        group += 1
                        for l in 0..<16 {
                            let i = part * 16 + l
                            var q = Int((p[o + 32 + half * 32 + i] >> UInt8(shift)) & 3)
                            if p[o + i] & mask == 0 { q -= 4 }
                            dst[out] = dl * Float(q)
                            out += 1
                        }
                    }
                    mask = mask &<< 1
                }
            }
        }
    case .q4_k, .q5_k:
        // { d, dmin, scales[12], [qh[32],] qs[128] }: 4 groups of 64 values from 32 bytes (low nibbles, then high),
        // Q5_K adding bit (2 * group + 0 / 1) of qh[l] as 16; 8 6-bit scales and mins.
        let five = w.dtype == .q5_k, size = five ? 176 : 144
        for b in 0..<K / 256 {
            let o = b * size, d = halfToFloat(u16(o)), dmin = halfToFloat(u16(o + 2))
            let s = o + 4, qh = o + 16, qs = o + (five ? 48 : 16)
            func scaleMin(_ j: Int) -> (Int, Int) {
                if j < 4 { return (Int(p[s + j] & 63), Int(p[s + j + 4] & 63)) }
                return (Int(p[s + j + 4] & 0xF) | Int(p[s + j - 4] >> 6) << 4, Int(p[s + j + 4] >> 4) | Int(p[s + j] >> 6) << 4)
            }
            for group in 0..<4 {
                let (sc1, m1) = scaleMin(2 * group), (sc2, m2) = scaleMin(2 * group + 1)
                let d1 = d * Float(sc1), dm1 = dmin * Float(m1), d2 = d * Float(sc2), dm2 = dmin * Float(m2)
                for l in 0..<32 {
                    let byte = p[qs + 32 * group + l]
                    var lo = Int(byte & 15), hi = Int(byte >> 4)
                    if five {
                        let h = p[qh + l] >> UInt8(2 * group)
                        lo += Int(h & 1) * 16
                        hi += Int((h >> 1) & 1) * 16
                    }
                    dst[b * 256 + 64 * group + l] = d1 * Float(lo) - dm1
                    dst[b * 256 + 64 * group + 32 + l] = d2 * Float(hi) - dm2
                }
            }
        }
    case .q6_k:
        // { ql[128], qh[64], scales[16] (int8), d }: per half of 128, four 32-value quarters from ql (low nibbles of
        // bytes 0-31, 32-63, then high nibbles) and 2 bits of qh[l] each.
        for b in 0..<K / 256 {
            let o = b * 210, d = halfToFloat(u16(o + 208))
            for half in 0..<2 {
                let ql = o + 64 * half, qh = o + 128 + 32 * half, sc = o + 192 + 8 * half
                for l in 0..<32 {
                    let h = Int(p[qh + l])
                    let q = [Int(p[ql + l] & 15) | (h & 3) << 4, Int(p[ql + 32 + l] & 15) | ((h >> 2) & 3) << 4,
                             Int(p[ql + l] >> 4) | ((h >> 4) & 3) << 4, Int(p[ql + 32 + l] >> 4) | ((h >> 6) & 3) << 4]
                    for quarter in 0..<4 {
                        let scale = d * Float(Int8(bitPattern: p[sc + l / 16 + 2 * quarter]))
                        dst[b * 256 + 128 * half + 32 * quarter + l] = scale * Float(q[quarter] - 32)
                    }
                }
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
