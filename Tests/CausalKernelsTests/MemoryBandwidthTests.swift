import CausalKernels
import XCTest

final class MemoryBandwidthTests: XCTestCase {
    /// The wrapping sum of little-endian 64-bit words, a last partial word zero-extended: what ck_read_sum promises.
    func referenceSum(_ bytes: UnsafeRawBufferPointer) -> UInt64 {
        var s: UInt64 = 0
        var i = 0
        while i < bytes.count {
            var w: UInt64 = 0
            for j in 0..<min(8, bytes.count - i) { w |= UInt64(bytes[i + j]) << (8 * UInt64(j)) }
            s &+= w
            i += 8
        }
        return s
    }

    /// Every level returns the reference sum, for lengths that exercise the unrolled loop, the single-vector loop
    /// and the scalar tail, at unaligned starts.
    func testReadSumMatchesReferenceOnEveryLevel() {
        var rng = SplitMix64(seed: 7)
        let buffer = (0..<20_000).map { _ in UInt8.random(in: 0...255, using: &rng) }
        buffer.withUnsafeBytes { all in
            forEachISA { _, name in
                for (start, count) in [(0, 0), (0, 1), (3, 7), (0, 8), (5, 63), (0, 64), (1, 65), (0, 511), (8, 512), (7, 513),
                                       (0, 1000), (13, 4099), (0, 19_999), (0, 20_000)] {
                    let view = UnsafeRawBufferPointer(rebasing: all[start..<(start + count)])
                    XCTAssertEqual(ck_read_sum(view.baseAddress, view.count), referenceSum(view), "\(name): [\(start), +\(count))")
                }
            }
        }
    }

    /// Split across a pool in chunks (at multiples of 8 bytes), the sum is the same as one pass.
    func testPooledReadEqualsOnePass() {
        let count = MemoryBandwidth.chunkBytes * 2 + 1000 + 5
        let p = UnsafeMutableRawPointer.allocate(byteCount: count, alignment: 64)
        defer { p.deallocate() }
        var rng = SplitMix64(seed: 11)
        for i in 0..<count { p.storeBytes(of: UInt8.random(in: 0...255, using: &rng), toByteOffset: i, as: UInt8.self) }
        let view = UnsafeRawBufferPointer(start: p, count: count)
        let expected = referenceSum(view)
        for threads in [1, 2, 3] {
            XCTAssertEqual(MemoryBandwidth.readOnce(view, pool: ThreadPool(threads: threads)), expected, "\(threads) threads")
        }
    }

    func testMeasureReportsEveryThreadCount() throws {
        for huge in [false, true] {
            let m = try MemoryBandwidth.measure(bytes: 8 << 20, threadCounts: [1, 2], repeats: 2, hugePages: huge)
            XCTAssertEqual(m.map(\.threads), [1, 2])
            for r in m {
                XCTAssertEqual(r.seconds.count, 2)
                XCTAssertEqual(r.bytes, 8 << 20)
                XCTAssertEqual(r.hugePages, huge)
                if let h = r.hugePageBytes { XCTAssertTrue(h >= 0 && h <= 8 << 20, "\(h)") }
                XCTAssertTrue(r.bestGBPerSecond > 0 && r.bestGBPerSecond.isFinite, "\(r)")
                XCTAssertGreaterThanOrEqual(r.bestGBPerSecond, r.medianGBPerSecond)
            }
        }
    }

    /// The measurement buffer is 2 MiB aligned, writable to its last byte, for both page sizes.
    func testAllocation() {
        for huge: Int32 in [0, 1] {
            let bytes = (3 << 20) + 5
            guard let p = ck_membw_alloc(bytes, huge) else { return XCTFail("allocation failed") }
            XCTAssertEqual(UInt(bitPattern: p) % UInt(2 << 20), 0)
            p.storeBytes(of: 7, toByteOffset: bytes - 1, as: UInt8.self)
            XCTAssertEqual(ck_read_sum(p + (bytes - 1), 1), 7)
            ck_membw_free(p, bytes)
        }
        XCTAssertNil(ck_membw_alloc(0, 0))
    }
}
