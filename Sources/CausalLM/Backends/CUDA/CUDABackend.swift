import Foundation
import CausalKernels

// The CUDA backend: the op seam (Backend.swift) on one NVIDIA GPU through the driver API and NVRTC, both loaded at run
// time (CUDADriver.swift), with the kernels of CUDAKernels.swift. All work is queued on one stream; the host waits only
// in `logits` (and when a sequence's device cache must grow or be filled from the host).
//
// Weights are uploaded once, at first use, and kept per WeightMatrix (keyed by its data pointer and shape): F32 as
// fp32, BF16 as bf16, anything else (F16, Q8_0, Q4_*, K-quants ...) dequantized by the CPU dequantizer and stored as
// bf16 (`.bf16`, the fast path) or fp32 (`.f32`, reference precision: every weight fp32).
//
// Keys and values live in a device cache per KVCache object (position-major: [layer][k|v][capacity][kvDim]), grown by
// doubling. The host KVCache stays authoritative too: each step's new keys and values are copied back into it
// (asynchronously, scattered once the step ends), so the prefix cache and n > 1 choices, which copy host rows, keep
// working; rows the host holds that the device has not written (a prefix-cache hit) are uploaded before the step.

final class CUDABackend: DecoderBackend {
    enum WeightFormat: String { case f32, bf16 }

    let driver: CUDADriver
    let weightFormat: WeightFormat
    let deviceName: String
    let computeCapability: (major: Int, minor: Int)
    private let context: CUhandle
    private let stream: CUhandle
    private var functions: [String: CUhandle] = [:]
    private let lock = NSRecursiveLock()   // weights and vectors (the allocator has its own)

    var name: String { "cuda (\(deviceName), sm_\(computeCapability.major)\(computeCapability.minor), \(weightFormat.rawValue) weights)" }

    /// Opens the first GPU and compiles the kernels. Throws "no CUDA device: ..." without a driver or a device, and
    /// NVRTC's error (with its log) if the kernels do not compile.
    init(weights: WeightFormat) throws {
        let driver = try CUDADriver()
        self.driver = driver
        self.weightFormat = weights
        var r = driver.cuInit(0)
        guard r == 0 else {
            throw CausalError.invalidArgument("no CUDA device: cuInit failed in \(driver.library.path): \(driver.message(r)) (\(r))")
        }
        var count: Int32 = 0
        r = driver.cuDeviceGetCount(&count)
        guard r == 0, count > 0 else {
            throw CausalError.invalidArgument("no CUDA device: the driver (\(driver.library.path)) reports \(r == 0 ? "no devices" : driver.message(r))")
        }
        var dev: Int32 = 0
        try driver.check(driver.cuDeviceGet(&dev, 0), "cuDeviceGet(0)")
        var nameBytes = [CChar](repeating: 0, count: 256)
        _ = driver.cuDeviceGetName(&nameBytes, 255, dev)
        deviceName = String(cString: nameBytes)
        var major: Int32 = 0, minor: Int32 = 0
        try driver.check(driver.cuDeviceGetAttribute(&major, CUDADriver.attributeComputeCapabilityMajor, dev), "cuDeviceGetAttribute")
        try driver.check(driver.cuDeviceGetAttribute(&minor, CUDADriver.attributeComputeCapabilityMinor, dev), "cuDeviceGetAttribute")
        computeCapability = (Int(major), Int(minor))
        var ctx: CUhandle? = nil
        try driver.check(driver.cuDevicePrimaryCtxRetain(&ctx, dev), "cuDevicePrimaryCtxRetain")
        guard let ctx else { throw CausalError.invalidArgument("CUDA: no primary context") }
        context = ctx
        try driver.check(driver.cuCtxSetCurrent(ctx), "cuCtxSetCurrent")
        var s: CUhandle? = nil
        try driver.check(driver.cuStreamCreate(&s, 1 /* CU_STREAM_NON_BLOCKING */), "cuStreamCreate")
        stream = s!
        allocator = Allocator(driver: driver, context: ctx, stream: s!)
        try loadKernels()
    }

    /// Compiles CUDAKernels.source for this GPU (CUBIN for sm_XY; PTX for compute_XY when NVRTC does not know the
    /// GPU) and looks up every kernel. The compiled module is kept for the process.
    private static var compiled: [String: NVRTC.Output] = [:]
    private static let compiledLock = NSLock()

    private func loadKernels() throws {
        let arch = "\(computeCapability.major)\(computeCapability.minor)"
        Self.compiledLock.lock()
        defer { Self.compiledLock.unlock() }
        let nvrtc = try NVRTC()
        let out: NVRTC.Output
        if let c = Self.compiled[arch] {
            out = c
        } else {
            do {
                out = try nvrtc.compile(CUDAKernels.source, name: "causal_kernels.cu", architecture: "sm_" + arch)
            } catch {
                out = try nvrtc.compile(CUDAKernels.source, name: "causal_kernels.cu", architecture: "compute_" + arch)
            }
            Self.compiled[arch] = out
        }
        var module: CUhandle? = nil
        try out.code.withUnsafeBytes { try driver.check(driver.cuModuleLoadData(&module, $0.baseAddress), "cuModuleLoadData (NVRTC \(nvrtc.version), \(out.isCUBIN ? "sm" : "compute")_\(arch))") }
        for n in CUDAKernels.names {
            var f: CUhandle? = nil
            try driver.check(driver.cuModuleGetFunction(&f, module, n), "cuModuleGetFunction(\(n))")
            functions[n] = f
        }
    }

    // MARK: memory

    /// Device memory: blocks freed by buffers go back to a free list by size (the same step shapes recur every step)
    /// and are reused in stream order. Buffers hold the allocator, not the backend, so they may outlive it.
    final class Allocator {
        let driver: CUDADriver
        let context: CUhandle
        let stream: CUhandle
        private var freeBlocks: [Int: [CUdeviceptr]] = [:]
        private let lock = NSLock()

        init(driver: CUDADriver, context: CUhandle, stream: CUhandle) { self.driver = driver; self.context = context; self.stream = stream }

        static func rounded(_ bytes: Int) -> Int { max(256, (bytes + 255) & ~255) }

        func allocate(bytes: Int) -> CUdeviceptr {
            let size = Self.rounded(bytes)
            lock.lock(); defer { lock.unlock() }
            if var list = freeBlocks[size], let p = list.popLast() { freeBlocks[size] = list; return p }
            _ = driver.cuCtxSetCurrent(context)
            var p: CUdeviceptr = 0
            var r = driver.cuMemAlloc(&p, size)
            if r != 0 {   // out of memory: give the cached blocks back and retry once
                _ = driver.cuStreamSynchronize(stream)
                for (_, list) in freeBlocks { list.forEach { _ = driver.cuMemFree($0) } }
                freeBlocks = [:]
                r = driver.cuMemAlloc(&p, size)
            }
            precondition(r == 0, "CUDA: cuMemAlloc(\(size)) failed: \(driver.message(r))")
            return p
        }

        func release(_ p: CUdeviceptr, bytes: Int) {
            lock.lock(); defer { lock.unlock() }
            freeBlocks[Self.rounded(bytes), default: []].append(p)
        }

        deinit {
            _ = driver.cuCtxSetCurrent(context)
            _ = driver.cuStreamSynchronize(stream)
            for (_, list) in freeBlocks { list.forEach { _ = driver.cuMemFree($0) } }
        }
    }
    private(set) var allocator: Allocator!

    final class DeviceBuffer: BackendBuffer {
        let pointer: CUdeviceptr
        let allocator: Allocator
        init(_ allocator: Allocator, count: Int) {
            self.allocator = allocator
            pointer = allocator.allocate(bytes: max(count, 1) * 4)
            super.init(count: count)
        }
        deinit { allocator.release(pointer, bytes: max(count, 1) * 4) }
    }

    /// A device copy of host data that lives as long as the value.
    final class DeviceArray {
        let pointer: CUdeviceptr
        let bytes: Int
        let allocator: Allocator
        init(_ allocator: Allocator, bytes: Int) { self.allocator = allocator; self.bytes = bytes; pointer = allocator.allocate(bytes: bytes) }
        deinit { allocator.release(pointer, bytes: bytes) }
    }

    private func setCurrent() { _ = driver.cuCtxSetCurrent(context) }

    private func synchronize() {
        setCurrent()
        let r = driver.cuStreamSynchronize(stream)
        precondition(r == 0, "CUDA: cuStreamSynchronize failed: \(driver.message(r)) (a kernel fault?)")
    }

    /// Uploads `bytes` from host memory and waits (pageable host memory).
    private func upload(_ src: UnsafeRawPointer, bytes: Int, to dst: CUdeviceptr) {
        guard bytes > 0 else { return }
        setCurrent()
        let r = driver.cuMemcpyHtoDAsync(dst, src, bytes, stream)
        precondition(r == 0, "CUDA: cuMemcpyHtoD failed: \(driver.message(r))")
        synchronize()
    }

    private func deviceArray<T>(_ values: [T]) -> DeviceArray {
        let a = DeviceArray(allocator, bytes: max(values.count, 1) * MemoryLayout<T>.stride)
        values.withUnsafeBytes { if let p = $0.baseAddress { upload(p, bytes: $0.count, to: a.pointer) } }
        return a
    }

    @inline(__always) private func dev(_ b: BackendBuffer) -> CUdeviceptr { unsafeDowncast(b, to: DeviceBuffer.self).pointer }

    // MARK: launching

    enum Arg {
        case ptr(CUdeviceptr), i32(Int32), i64(Int64), f32(Float)
    }

    private func launch(_ kernel: String, grid: (Int, Int), block: Int, _ args: [Arg]) {
        guard grid.0 > 0, grid.1 > 0 else { return }
        let storage = UnsafeMutableRawPointer.allocate(byteCount: max(args.count, 1) * 8, alignment: 8)
        defer { storage.deallocate() }
        var params = [UnsafeMutableRawPointer?](repeating: nil, count: args.count)
        for (i, a) in args.enumerated() {
            let slot = storage + i * 8
            switch a {
            case .ptr(let p): slot.storeBytes(of: p, as: UInt64.self)
            case .i32(let v): slot.storeBytes(of: v, as: Int32.self)
            case .i64(let v): slot.storeBytes(of: v, as: Int64.self)
            case .f32(let v): slot.storeBytes(of: v, as: Float.self)
            }
            params[i] = slot
        }
        setCurrent()
        let r = params.withUnsafeMutableBufferPointer {
            driver.cuLaunchKernel(functions[kernel]!, UInt32(grid.0), UInt32(grid.1), 1, UInt32(block), 1, 1, 0, stream,
                                  $0.baseAddress, nil)
        }
        precondition(r == 0, "CUDA: launching \(kernel) failed: \(driver.message(r))")
    }

    private func elementwise(_ kernel: String, count: Int, _ args: [Arg]) {
        launch(kernel, grid: ((count + 255) / 256, 1), block: 256, args)
    }

    // MARK: weights

    private struct DeviceWeight {
        let array: DeviceArray
        let bf16: Bool
    }
    private var weights: [WeightKey: DeviceWeight] = [:]
    private struct WeightKey: Hashable { let data: UInt; let rows: Int; let cols: Int; let dtype: Int32 }

    /// The device copy of `w`, uploaded on first use.
    private func weight(_ w: WeightMatrix) -> DeviceWeight {
        lock.lock(); defer { lock.unlock() }
        let key = WeightKey(data: UInt(bitPattern: w.data), rows: w.rows, cols: w.cols, dtype: w.dtype.rawValue)
        if let d = weights[key] { return d }
        let count = w.rows * w.cols
        let d: DeviceWeight
        if w.dtype == .f32 || (w.dtype == .bf16 && weightFormat == .bf16) {
            let a = DeviceArray(allocator, bytes: max(w.byteCount, 4))
            upload(w.data, bytes: w.byteCount, to: a.pointer)
            d = DeviceWeight(array: a, bf16: w.dtype == .bf16)
        } else {
            // Dequantize on the host in slabs of rows (the CPU dequantizer: the values the CPU multiplies with).
            let bf16 = weightFormat == .bf16
            let a = DeviceArray(allocator, bytes: max(count * (bf16 ? 2 : 4), 4))
            let slab = max(1, (1 << 22) / max(w.cols, 1))
            let f = UnsafeMutablePointer<Float>.allocate(capacity: slab * w.cols)
            let h = UnsafeMutablePointer<UInt16>.allocate(capacity: slab * w.cols)
            defer { f.deallocate(); h.deallocate() }
            var r0 = 0
            while r0 < w.rows {
                let n = min(slab, w.rows - r0)
                for r in 0..<n { dequantize(w, row: r0 + r, into: f + r * w.cols) }
                if bf16 {
                    for i in 0..<(n * w.cols) { h[i] = CUDABackend.bf16(f[i]) }
                    upload(h, bytes: n * w.cols * 2, to: a.pointer + UInt64(r0 * w.cols * 2))
                } else {
                    upload(f, bytes: n * w.cols * 4, to: a.pointer + UInt64(r0 * w.cols * 4))
                }
                r0 += n
            }
            d = DeviceWeight(array: a, bf16: bf16)
        }
        weights[key] = d
        return d
    }

    /// fp32 to bf16, rounding to nearest even (NaN stays NaN).
    static func bf16(_ x: Float) -> UInt16 {
        let b = x.bitPattern
        if x.isNaN { return UInt16(b >> 16) | 0x40 }
        return UInt16((b &+ 0x7FFF &+ ((b >> 16) & 1)) >> 16)
    }

    /// Device copies of small float vectors (norm weights, biases), kept with their host values: a lookup checks them.
    private var vectors: [UInt: (host: [Float], device: DeviceArray)] = [:]

    private func vector(_ v: [Float]) -> CUdeviceptr {
        lock.lock(); defer { lock.unlock() }
        let key = v.withUnsafeBufferPointer { UInt(bitPattern: $0.baseAddress) }
        if let e = vectors[key], e.host == v { return e.device.pointer }
        let d = deviceArray(v)
        vectors[key] = (v, d)
        return d.pointer
    }

    // MARK: per-sequence device caches

    private final class DeviceKV {
        weak var owner: KVCache?
        var memory: DeviceArray
        var capacity: Int
        /// Leading positions whose device rows equal the host cache's.
        var valid = 0
        init(owner: KVCache, memory: DeviceArray, capacity: Int) { self.owner = owner; self.memory = memory; self.capacity = capacity }
    }
    private var caches: [ObjectIdentifier: DeviceKV] = [:]

    /// The rows of the step being run, uploaded once per step (appendKV of layer 0 builds them; every layer reuses).
    private struct StepRows {
        let positions: [Int]
        let caches: [ObjectIdentifier]
        let base: DeviceArray, cap: DeviceArray, pos: DeviceArray, prompt: DeviceArray
        let entries: [DeviceKV]     // per row
        let maxKeys: Int            // longest key range any (row, head) reads
    }
    private var step: StepRows?
    /// Keys and values of the step, copied back for the host caches: per layer (n, kvDim) keys then values.
    private var mirror: UnsafeMutableRawPointer?
    private var mirrorBytes = 0
    private var mirrorLayers = 0

    private func stepRows(_ rows: RaggedRows, _ chunks: [SequenceChunk], kvDim: Int, layers: Int) -> StepRows {
        let ids = (0..<rows.count).map { ObjectIdentifier(chunks[rows.chunk[$0]].cache) }
        if let s = step, s.positions == rows.position, s.caches == ids { return s }
        // Drop the device caches of sequences that ended.
        for (id, e) in caches where e.owner == nil || e.owner!.isReleased { caches[id] = nil }
        var entries: [DeviceKV] = []
        var seen: [ObjectIdentifier: DeviceKV] = [:]
        for c in chunks where !c.tokens.isEmpty {
            let cache = c.cache, id = ObjectIdentifier(cache)
            if seen[id] != nil { continue }
            let first = cache.count, end = cache.count + c.tokens.count
            var e = caches[id].flatMap { $0.owner === cache ? $0 : nil }
            if e == nil || e!.capacity < end {
                let capacity = min(cache.capacity, max(256, 1 << Int(ceil(log2(Double(max(end, 1)))))))
                let m = DeviceArray(allocator, bytes: layers * 2 * capacity * kvDim * 4)
                if let old = e {   // grow: copy the valid rows of every layer's keys and values
                    for s in 0..<(layers * 2) where old.valid > 0 {
                        _ = driver.cuMemcpyDtoDAsync(m.pointer + UInt64(s * capacity * kvDim * 4),
                                                     old.memory.pointer + UInt64(s * old.capacity * kvDim * 4),
                                                     old.valid * kvDim * 4, stream)
                    }
                    synchronize()
                    old.memory = m; old.capacity = capacity
                } else {
                    e = DeviceKV(owner: cache, memory: m, capacity: capacity)
                    caches[id] = e
                }
            }
            let entry = e!
            if first < entry.valid { entry.valid = first }          // truncated: rows from `first` on are rewritten
            if entry.valid < first { fill(entry, from: cache, upTo: first, kvDim: kvDim, layers: layers) }
            seen[id] = entry
        }
        var maxKeys = 1
        var base: [UInt64] = [], cap: [Int32] = [], pos: [Int32] = [], prompt: [Int32] = []
        for r in 0..<rows.count {
            let cache = chunks[rows.chunk[r]].cache, e = seen[ObjectIdentifier(cache)]!
            entries.append(e)
            base.append(e.memory.pointer); cap.append(Int32(e.capacity)); pos.append(Int32(rows.position[r]))
            prompt.append(Int32(cache.promptLength))
            maxKeys = max(maxKeys, rows.position[r] + 1, cache.promptLength)
        }
        let s = StepRows(positions: rows.position, caches: ids, base: deviceArray(base), cap: deviceArray(cap),
                         pos: deviceArray(pos), prompt: deviceArray(prompt), entries: entries, maxKeys: maxKeys)
        step = s
        return s
    }

    /// Uploads host cache rows [entry.valid, upTo) of every layer (the host layout is head-major (Hkv, capacity, D);
    /// only kvDim matters here: rows are gathered per position).
    private func fill(_ entry: DeviceKV, from cache: KVCache, upTo end: Int, kvDim: Int, layers: Int) {
        let start = entry.valid, n = end - start
        guard n > 0, let layout = hostLayout, layout.groups * layout.width == kvDim else { return }
        let tmp = UnsafeMutablePointer<Float>.allocate(capacity: n * kvDim)
        defer { tmp.deallocate() }
        for l in 0..<layers {
            for (s, src) in [cache.keys[l], cache.values[l]].enumerated() {
                for p in 0..<n {
                    for g in 0..<layout.groups {
                        (tmp + p * kvDim + g * layout.width).update(from: src + (g * cache.capacity + start + p) * layout.width, count: layout.width)
                    }
                }
                upload(tmp, bytes: n * kvDim * 4, to: entry.memory.pointer + UInt64(((2 * l + s) * entry.capacity + start) * kvDim * 4))
            }
        }
        entry.valid = end
    }

    /// The host caches' layout (groups = key/value heads, width = head size), set by `attach`.
    var hostLayout: (groups: Int, width: Int)?
    var layerCount = 0

    deinit {
        if let m = mirror { _ = driver.cuCtxSetCurrent(context); _ = driver.cuStreamSynchronize(stream); _ = driver.cuMemFreeHost(m) }
    }

    // MARK: DecoderBackend

    func buffer(_ count: Int) -> BackendBuffer {
        setCurrent()   // the forward may run on any thread; every operation it makes starts with a buffer
        return DeviceBuffer(allocator, count: count)
    }

    func embed(_ table: WeightMatrix, tokens: [Int], scale: Float, into x: BackendBuffer) {
        let w = weight(table)
        let t = deviceArray(tokens.map { Int32($0) })
        launch(w.bf16 ? "embed_bf16" : "embed_f32", grid: (tokens.count, 1), block: 256,
               [.ptr(w.array.pointer), .ptr(t.pointer), .ptr(dev(x)), .i32(Int32(table.cols)), .f32(scale)])
        withExtendedLifetime(t) {}
    }

    func matmul(_ w: WeightMatrix, _ x: BackendBuffer, rows n: Int, bias: [Float]?, into y: BackendBuffer) {
        matmul(w, dev(x), rows: n, bias: bias, into: dev(y))
    }

    private func matmul(_ w: WeightMatrix, _ x: CUdeviceptr, rows n: Int, bias: [Float]?, into y: CUdeviceptr) {
        let d = weight(w)
        let b: CUdeviceptr = bias.map { vector($0) } ?? 0
        let args: [Arg] = [.ptr(x), .ptr(d.array.pointer), .ptr(b), .ptr(y), .i32(Int32(n)), .i32(Int32(w.rows)), .i32(Int32(w.cols))]
        if n <= CUDAKernels.gemvMaxRows {
            let blocks = (w.rows + CUDAKernels.gemvOutputs - 1) / CUDAKernels.gemvOutputs
            launch(d.bf16 ? "gemv_bf16" : "gemv_f32", grid: (blocks, 1), block: CUDAKernels.gemvOutputs, args)
        } else {
            launch(d.bf16 ? "matmul_bf16" : "matmul_f32",
                   grid: ((w.rows + CUDAKernels.tileCols - 1) / CUDAKernels.tileCols, (n + CUDAKernels.tileRows - 1) / CUDAKernels.tileRows),
                   block: 256, args)
        }
    }

    func rmsNorm(_ x: BackendBuffer, weight: [Float], rows: Int, width: Int, eps: Float, into y: BackendBuffer) {
        launch("rmsnorm", grid: (rows, 1), block: CUDAKernels.normThreads,
               [.ptr(dev(x)), .ptr(vector(weight)), .ptr(dev(y)), .i32(Int32(width)), .f32(eps)])
    }

    func ropeAngles(positions: [Int], frequencies: [Float]) -> RopeAngles {
        // The same values as the CPU backend's (cosf/sinf of Float(position) · frequency on the host).
        let half = frequencies.count
        var c = [Float](repeating: 0, count: positions.count * half), s = c
        for (r, pos) in positions.enumerated() {
            for i in 0..<half {
                let angle = Float(pos) * frequencies[i]
                c[r * half + i] = cosf(angle)
                s[r * half + i] = sinf(angle)
            }
        }
        let cb = DeviceBuffer(allocator, count: c.count), sb = DeviceBuffer(allocator, count: s.count)
        c.withUnsafeBytes { upload($0.baseAddress!, bytes: $0.count, to: cb.pointer) }
        s.withUnsafeBytes { upload($0.baseAddress!, bytes: $0.count, to: sb.pointer) }
        return RopeAngles(cos: cb, sin: sb)
    }

    func rope(_ x: BackendBuffer, rows: Int, heads: Int, headDim: Int, ropeDim: Int, angles: RopeAngles,
              style: DecoderConfig.RopeStyle) {
        elementwise("rope", count: rows * heads * (ropeDim / 2),
                    [.ptr(dev(x)), .ptr(dev(angles.cos)), .ptr(dev(angles.sin)), .i32(Int32(rows)), .i32(Int32(heads)),
                     .i32(Int32(headDim)), .i32(Int32(ropeDim)), .i32(style == .adjacent ? 1 : 0)])
    }

    func appendKV(_ k: BackendBuffer, _ v: BackendBuffer, rows: RaggedRows, chunks: [SequenceChunk], layer l: Int,
                  kvHeads: Int, headDim D: Int) {
        let kvDim = kvHeads * D, n = rows.count
        let s = stepRows(rows, chunks, kvDim: kvDim, layers: layerCount)
        launch("append_kv", grid: (n, 1), block: 128,
               [.ptr(dev(k)), .ptr(dev(v)), .ptr(s.base.pointer), .ptr(s.cap.pointer), .ptr(s.pos.pointer), .i32(Int32(l)), .i32(Int32(kvDim))])
        // Copy the new rows back for the host caches (scattered in `logits`, once the step's work is done).
        let bytes = n * kvDim * 4, need = layerCount * 2 * bytes
        if l == 0 || mirror == nil || mirrorBytes < need {
            if mirrorBytes < need {
                if let m = mirror { _ = driver.cuMemFreeHost(m) }
                var p: UnsafeMutableRawPointer? = nil
                let r = driver.cuMemAllocHost(&p, need)
                precondition(r == 0, "CUDA: cuMemAllocHost(\(need)) failed: \(driver.message(r))")
                mirror = p; mirrorBytes = need
            }
            mirrorLayers = 0
        }
        let m = mirror! + l * 2 * bytes
        _ = driver.cuMemcpyDtoHAsync(m, dev(k), bytes, stream)
        _ = driver.cuMemcpyDtoHAsync(m + bytes, dev(v), bytes, stream)
        mirrorLayers = max(mirrorLayers, l + 1)
    }

    func attention(_ q: BackendBuffer, rows: RaggedRows, chunks: [SequenceChunk], layer l: Int, heads H: Int, kvHeads Hkv: Int,
                   headDim D: Int, scale: Float, window: Int?, promptAttention: AttentionMask, into out: BackendBuffer) {
        precondition(D <= CUDAKernels.maxHeadDim, "the CUDA attention kernel takes head sizes up to \(CUDAKernels.maxHeadDim), not \(D)")
        let n = rows.count
        let s = stepRows(rows, chunks, kvDim: Hkv * D, layers: layerCount)
        let scores = DeviceBuffer(allocator, count: n * H * s.maxKeys)
        let mode: Int32
        switch promptAttention {
        case .causal: mode = 0
        case .prefix, .bidirectional: mode = 1
        case .mixed: mode = 2
        }
        launch("attention", grid: (H, n), block: CUDAKernels.attentionThreads,
               [.ptr(dev(q)), .ptr(s.base.pointer), .ptr(s.cap.pointer), .ptr(s.pos.pointer), .ptr(s.prompt.pointer),
                .i32(Int32(l)), .i32(Int32(H)), .i32(Int32(Hkv)), .i32(Int32(D)), .f32(scale), .i32(Int32(window ?? 0)),
                .i32(mode), .ptr(scores.pointer), .i32(Int32(s.maxKeys)), .ptr(dev(out))])
        withExtendedLifetime(scores) {}
    }

    func gatedActivation(_ g: BackendBuffer, _ u: BackendBuffer, count: Int, rows: Int, activation: DecoderConfig.Activation) {
        elementwise(activation == .silu ? "silu_mul" : "gelu_tanh_mul", count: count, [.ptr(dev(g)), .ptr(dev(u)), .i64(Int64(count))])
    }

    func add(_ x: BackendBuffer, _ y: BackendBuffer, count: Int) {
        elementwise("add_inplace", count: count, [.ptr(dev(x)), .ptr(dev(y)), .i64(Int64(count))])
    }

    func logits(_ x: BackendBuffer, width C: Int, wanted: LogitRows, head: WeightMatrix, normWeight: [Float], eps: Float,
                softcap: Float?) -> [[Float]] {
        let m = wanted.rows.count, V = head.rows
        var out = [Float](repeating: 0, count: m * V)
        if m > 0 {
            let idx = deviceArray(wanted.rows.map { Int32($0) })
            let hn = DeviceBuffer(allocator, count: m * C), logits = DeviceBuffer(allocator, count: m * V)
            launch("gather_rows", grid: (m, 1), block: 256, [.ptr(dev(x)), .ptr(idx.pointer), .ptr(hn.pointer), .i32(Int32(C))])
            launch("rmsnorm", grid: (m, 1), block: CUDAKernels.normThreads,
                   [.ptr(hn.pointer), .ptr(vector(normWeight)), .ptr(hn.pointer), .i32(Int32(C)), .f32(eps)])
            matmul(head, hn.pointer, rows: m, bias: nil, into: logits.pointer)
            if let cap = softcap { elementwise("softcap", count: m * V, [.ptr(logits.pointer), .i64(Int64(m * V)), .f32(cap)]) }
            out.withUnsafeMutableBytes {
                _ = driver.cuMemcpyDtoHAsync($0.baseAddress, logits.pointer, $0.count, stream)
                synchronize()
            }
            withExtendedLifetime((idx, hn, logits)) {}
        } else {
            synchronize()
        }
        scatterMirror()
        return wanted.ranges.map { Array(out[($0.lowerBound * V)..<($0.upperBound * V)]) }
    }

    /// Writes the step's keys and values (copied back in `appendKV`) into the host caches, as the CPU backend would
    /// have, and marks them valid on the device.
    private func scatterMirror() {
        guard let s = step, let m = mirror, let layout = hostLayout else { return }
        let n = s.positions.count, kvDim = layout.groups * layout.width, bytes = n * kvDim * 4
        for l in 0..<mirrorLayers {
            let kp = (m + l * 2 * bytes).assumingMemoryBound(to: Float.self), vp = (m + l * 2 * bytes + bytes).assumingMemoryBound(to: Float.self)
            for r in 0..<n {
                guard let cache = s.entries[r].owner, !cache.isReleased else { continue }
                for g in 0..<layout.groups {
                    let at = (g * cache.capacity + s.positions[r]) * layout.width
                    (cache.keys[l] + at).update(from: kp + r * kvDim + g * layout.width, count: layout.width)
                    (cache.values[l] + at).update(from: vp + r * kvDim + g * layout.width, count: layout.width)
                }
            }
        }
        for r in 0..<n { let e = s.entries[r]; e.valid = max(e.valid, s.positions[r] + 1) }
        step = nil
        mirrorLayers = 0
    }
}
