import CCausalKernels
import Foundation

/// Memory read bandwidth, measured the way decoding reads weights: one streaming pass over a buffer far larger than
/// the caches, split into chunks that the pool's threads read front to back (`ck_read_sum`: AVX-512, AVX2 or
/// scalar loads, whichever level is in use).
public enum MemoryBandwidth {
    public struct Measurement: Sendable {
        public var threads: Int
        public var bytes: Int
        /// Seconds of each timed pass.
        public var seconds: [Double]
        /// Bytes per second of the fastest pass, in GB/s (10^9 bytes).
        public var bestGBPerSecond: Double { Double(bytes) / (seconds.min() ?? .infinity) / 1e9 }
        public var medianGBPerSecond: Double {
            let s = seconds.sorted()
            return s.isEmpty ? 0 : Double(bytes) / s[s.count / 2] / 1e9
        }
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

    /// Allocates and fills a `bytes`-byte buffer, then for each thread count reads it once untimed and `repeats`
    /// times timed. The buffer is written before any pass, so every page is backed by memory.
    public static func measure(bytes: Int = 1 << 30, threadCounts: [Int], repeats: Int = 5) -> [Measurement] {
        precondition(bytes > 0 && repeats > 0)
        let buffer = UnsafeMutableRawPointer.allocate(byteCount: bytes, alignment: 4096)
        defer { buffer.deallocate() }
        // A pattern, not zeros: every page gets its own frame.
        let words = buffer.bindMemory(to: UInt64.self, capacity: bytes / 8)
        for i in 0..<(bytes / 8) { words[i] = UInt64(truncatingIfNeeded: i) &* 0x9E37_79B9_7F4A_7C15 }
        for i in (bytes / 8 * 8)..<bytes { buffer.storeBytes(of: 0xA5, toByteOffset: i, as: UInt8.self) }
        let view = UnsafeRawBufferPointer(start: buffer, count: bytes)
        var results: [Measurement] = []
        var check: UInt64 = 0
        for threads in threadCounts {
            let pool = ThreadPool(threads: threads)
            check &+= readOnce(view, pool: pool)   // warm-up: wakes the workers, faults nothing in (already written)
            var seconds: [Double] = []
            for _ in 0..<repeats {
                let t0 = DispatchTime.now().uptimeNanoseconds
                check &+= readOnce(view, pool: pool)
                seconds.append(Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9)
            }
            results.append(Measurement(threads: pool.threadCount, bytes: bytes, seconds: seconds))
        }
        withExtendedLifetime(check) {}
        return results
    }
}
