import Foundation
import XCTest

/// Runs the built `causal` with `args` (and `stdin` text, else no input), reading stdout and stderr concurrently so
/// that neither pipe fills up and blocks the child; the child is terminated after `timeout` seconds.
func runCausal(_ args: [String], stdin: String? = nil, timeout: Double = 600) throws -> CLITests.Output {
    let p = Process()
    p.executableURL = CLITests.productsDirectory.appendingPathComponent("causal")
    p.arguments = args
    let out = Pipe(), err = Pipe()
    p.standardOutput = out
    p.standardError = err
    let inp = stdin.map { _ in Pipe() }
    p.standardInput = inp ?? FileHandle.nullDevice
    try p.run()
    if let inp, let s = stdin {
        inp.fileHandleForWriting.write(Data(s.utf8))
        try inp.fileHandleForWriting.close()
    }
    DispatchQueue.global().asyncAfter(deadline: .now() + timeout) { if p.isRunning { p.terminate() } }
    let e = Locked(Data())
    let g = DispatchGroup()
    g.enter()
    DispatchQueue.global().async {
        let data = err.fileHandleForReading.readDataToEndOfFile()
        e.update { $0 = data }
        g.leave()
    }
    let o = out.fileHandleForReading.readDataToEndOfFile()
    g.wait()
    p.waitUntilExit()
    return CLITests.Output(status: p.terminationStatus, stdout: String(decoding: o, as: UTF8.self),
                           stderr: String(decoding: e.update { $0 }, as: UTF8.self))
}

/// A value shared with callbacks on other threads, read and written under a lock.
final class Locked<Value>: @unchecked Sendable {
    private let lock = NSLock()
    private var value: Value
    init(_ value: Value) { self.value = value }
    @discardableResult
    func update<R>(_ body: (inout Value) -> R) -> R {
        lock.lock()
        defer { lock.unlock() }
        return body(&value)
    }
}
