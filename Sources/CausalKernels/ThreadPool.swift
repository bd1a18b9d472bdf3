import CCausalKernels
import Foundation

/// A fork-join pool of persistent worker threads (`threads - 1` workers plus the calling thread).
///
/// `parallelFor` publishes a job to the workers (which spin briefly between jobs, then sleep on a condition
/// variable), takes part in it on the calling thread, and returns when every index is done. It creates no
/// threads and allocates nothing per call; the overhead is a few atomic operations while the workers are awake.
///
/// Threading contract: call `parallelFor` from one thread at a time. Calls from several threads at once are
/// safe — a lock serializes them — but they do not run concurrently. A `parallelFor` made from inside a body
/// (of this or any pool) runs its indices inline on that thread, so nesting never deadlocks.
public final class ThreadPool: @unchecked Sendable {
    private let pool: OpaquePointer

    /// Threads that run a job: the workers plus the caller.
    public var threadCount: Int { Int(ck_pool_threads(pool)) }

    /// - Parameter threads: total threads including the caller (at least 1); by default the number of active
    ///   processors.
    public init(threads: Int = ProcessInfo.processInfo.activeProcessorCount) {
        let n = Int32(clamping: max(1, threads))
        guard let p = ck_pool_create(n) else { fatalError("ThreadPool: cannot create \(n - 1) worker threads") }
        pool = p
    }

    deinit { ck_pool_destroy(pool) }

    /// Runs `body(i)` for every `i` in `0..<count`, spread over the pool's threads (in no particular order),
    /// and returns when all have finished.
    public func parallelFor(_ count: Int, _ body: (Int) -> Void) {
        if count <= 0 { return }
        if count == 1 || threadCount == 1 {
            for i in 0..<count { body(i) }
            return
        }
        withoutActuallyEscaping(body) { escapable in
            var job: (Int) -> Void = escapable
            withUnsafeMutablePointer(to: &job) { ptr in
                ck_pool_run(pool, Int64(count), { ctx, i in
                    ctx!.assumingMemoryBound(to: ((Int) -> Void).self).pointee(Int(i))
                }, UnsafeMutableRawPointer(ptr))
            }
        }
    }

    /// A pool with one thread per active processor.
    public static let shared = ThreadPool()
}
