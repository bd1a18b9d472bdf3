import Foundation
import NIOCore

/// Notices that the client of a request went away while the request is being answered, so its sequence can be
/// cancelled instead of running to `max_tokens` for nobody.
///
/// A handler at the front of the connection's channel pipeline sees the peer's end of input (`ChannelEvent.inputClosed`:
/// the server allows half-closure, so a client that closes its socket shows up as end of input first) and the
/// connection closing (`channelInactive`, e.g. after a reset). HTTP clients do not half-close a connection while they
/// wait for its response, so either one means nobody will read the answer. NIO reads the end of input even while
/// the request's body is not being consumed, so this is noticed promptly, also for a non-streaming request that has
/// nothing to write until it is done. The handler is removed when the request ends (keep-alive connections go on).
final class DisconnectWatch: @unchecked Sendable {
    private let lock = NSLock()
    private var disconnected = false
    private var stopped = false
    private var action: (@Sendable () -> Void)?
    private let channel: (any Channel)?
    private var handler: Handler?

    private final class Handler: ChannelInboundHandler, RemovableChannelHandler, @unchecked Sendable {
        typealias InboundIn = NIOAny
        weak var watch: DisconnectWatch?

        func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
            if let e = event as? ChannelEvent, e == .inputClosed { watch?.fire() }
            context.fireUserInboundEventTriggered(event)
        }

        func channelInactive(context: ChannelHandlerContext) {
            watch?.fire()
            context.fireChannelInactive()
        }
    }

    private init(channel: (any Channel)?) { self.channel = channel }

    /// Starts watching `channel` (nil: never fires).
    static func start(_ channel: (any Channel)?) async -> DisconnectWatch {
        let w = DisconnectWatch(channel: channel)
        guard let channel else { return w }
        let h = Handler()
        h.watch = w
        w.handler = h
        do {
            try await channel.pipeline.addHandler(h, position: .first).get()
        } catch {
            // The pipeline is gone: the connection has closed.
            w.fire()
            return w
        }
        // Also covers a connection that closed before the handler was in place (the future has completed already).
        channel.closeFuture.whenComplete { [weak w] _ in w?.fire() }
        return w
    }

    /// Whether the client has gone.
    var clientGone: Bool {
        lock.lock(); defer { lock.unlock() }
        return disconnected
    }

    /// Runs `action` once when the client goes (at once if it has gone already).
    func onDisconnect(_ action: @escaping @Sendable () -> Void) {
        lock.lock()
        if disconnected && !stopped {
            lock.unlock()
            action()
            return
        }
        self.action = action
        lock.unlock()
    }

    fileprivate func fire() {
        lock.lock()
        guard !stopped, !disconnected else { lock.unlock(); return }
        disconnected = true
        let a = action
        action = nil
        lock.unlock()
        a?()
    }

    /// Stops watching (the request is answered) and takes the handler out of the pipeline.
    func stop() {
        lock.lock()
        guard !stopped else { lock.unlock(); return }
        stopped = true
        action = nil
        let h = handler
        handler = nil
        lock.unlock()
        if let h, let channel { channel.pipeline.removeHandler(h, promise: nil) }
    }
}
