import CCausalKernels
import Foundation

/// Memory read bandwidth, measured the way decoding reads weights: one streaming pass over a buffer far larger than
/// the caches, split into chunks that the pool's threads read front to back (`ck_read_sum`: AVX-512, AVX2 or
/// scalar loads, whichever level is in use).
///
/// The page size matters on a virtual machine, where every TLB miss walks two page tables: on the project's 2-core
/// VM, 4 KiB pages read 5-20% slower than 2 MiB pages when the machine is quiet and up to a third slower while other
/// work runs. `hugePages` picks which one the buffer asks the kernel for.
public enum MemoryBandwidth {
    public struct Measurement: Sendable {
        public var threads: Int
        public var bytes: Int
        /// Whether 2 MiB pages were requested for the buffer.
        public var hugePages: Bool
        /// Bytes of the buffer that the kernel did back with huge pages (Linux, from /proc/self/smaps_rollup);
        /// nil where unknown.
        public var hugePageBytes: Int?
        /// Seconds of each timed pass.
        public var seconds: [Double]
        /// Bytes per second of the fastest pass, in GB/s (10^9 bytes).
        public var bestGBPerSecond: Double { Double(bytes) / (seconds.min() ?? .infinity) / 1e9 }
        public var medianGBPerSecond: Double {
            let s = seconds.sorted()
            return s.isEmpty ? 0 : Double(bytes) / s[s.count / 2] / 1e9
        }
    }

    public struct AllocationError: Error, CustomStringConvertible {
        public var bytes: Int
        public var description: String { "cannot allocate a \(bytes >> 20) MiB buffer for the memory bandwidth test" }
    }

    /// Chunk of the buffer one thread reads at a time.
    public static let chunkBytes = 4 << 20

    /// Reads `buffer` once on `pool`, split into `chunkBytes` chunks; returns the wrapping sum of its 64-bit words.
    public static func readOnce(_ buffer: UnsafeRawBufferPointer, pool: ThreadPool) -> UInt64 {
        guard let base = buffer.baseAddress, buffer.count > 0 else { return 0 }
        let chunks = (buffer.count + chunkBytes - 1) / chunkBytes
        let sums = UnsafeMutablePointer<UInt64>.allocate(capacity: chunks)
        defer { sums.deallocate() }
        pool.parallelFor(chunks) { c in
            let start = c * chunkBytes
            sums[c] = ck_read_sum(base + start, min(chunkBytes, buffer.count - start))
        }
        var total: UInt64 = 0
        for c in 0..<chunks { total &+= sums[c] }
        return total
    }

    /// AnonHugePages of this process in bytes (Linux), or nil.
    static func anonHugePageBytes() -> Int? {
        guard let text = try? String(contentsOfFile: "/proc/self/smaps_rollup", encoding: .utf8) else { return nil }
        for line in text.split(separator: "\n") where line.hasPrefix("AnonHugePages:") {
            let f = line.split(separator: " ", omittingEmptySubsequences: true)
            if f.count >= 2, let kb = Int(f[1]) { return kb * 1024 }
        }
        return nil
    }

    /// Allocates and fills a `bytes`-byte buffer (2 MiB or 4 KiB pages, see `hugePages`), then for each thread
    /// count reads it once untimed and `repeats` times timed. The buffer is written before any pass, so every page
    /// is backed by memory.
    public static func measure(bytes: Int = 1 << 30, threadCounts: [Int], repeats: Int = 5,
                               hugePages: Bool = false) throws -> [Measurement] {
        precondition(bytes > 0 && repeats > 0)
        let hugeBefore = anonHugePageBytes()
        guard let raw = ck_membw_alloc(bytes, hugePages ? 1 : 0) else { throw AllocationError(bytes: bytes) }
        defer { ck_membw_free(raw, bytes) }
        // A pattern, not zeros: every page gets its own frame.
        let words = raw.bindMemory(to: UInt64.self, capacity: bytes / 8)
        for i in 0..<(bytes / 8) { words[i] = UInt64(truncatingIfNeeded: i) &* 0x9E37_79B9_7F4A_7C15 }
        for i in (bytes / 8 * 8)..<bytes { raw.storeBytes(of: 0xA5, toByteOffset: i, as: UInt8.self) }
        var huge: Int? = nil
        if let before = hugeBefore, let after = anonHugePageBytes() { huge = max(0, min(bytes, after - before)) }
        let view = UnsafeRawBufferPointer(start: raw, count: bytes)
        var results: [Measurement] = []
        var check: UInt64 = 0
        for threads in threadCounts {
            let pool = ThreadPool(threads: threads)
            check &+= readOnce(view, pool: pool)   // warm-up: wakes the workers
            var seconds: [Double] = []
            for _ in 0..<repeats {
                let t0 = DispatchTime.now().uptimeNanoseconds
                check &+= readOnce(view, pool: pool)
                seconds.append(Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9)
            }
            results.append(Measurement(threads: pool.threadCount, bytes: bytes, hugePages: hugePages, hugePageBytes: huge, seconds: seconds))
        }
        withExtendedLifetime(check) {}
        return results
    }
}
