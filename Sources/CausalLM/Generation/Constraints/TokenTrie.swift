import Foundation

/// The vocabulary as a byte trie, stored flat in depth-first order, for computing which tokens a grammar state
/// allows in one walk. Built once per tokenizer (cached) from each id's bytes (`TextTokenizer.tokenBytes`); special
/// and control tokens, and tokens with no bytes, are left out (they are never allowed by a grammar).
final class TokenTrie: @unchecked Sendable {
    /// Per node, in depth-first order: its byte, its depth (1 = first byte of a token), the index just past its
    /// subtree, and the range `tokenStart[i]..<tokenStart[i + 1]` of `tokenIDs` ending exactly at it.
    let byte: [UInt8]
    let depth: [UInt16]
    let skip: [Int32]
    let tokenStart: [Int32]
    let tokenIDs: [Int32]
    let maxDepth: Int
    let vocabularySize: Int
    /// Each id's bytes (`bytesStart[id]..<bytesStart[id + 1]` of `bytes`); empty for left-out tokens.
    let bytes: [UInt8]
    let bytesStart: [Int32]

    init(tokenizer: any TextTokenizer) {
        let V = tokenizer.vocabularySize
        vocabularySize = V
        var all: [UInt8] = []
        var starts: [Int32] = [0]
        starts.reserveCapacity(V + 1)
        for id in 0..<V {
            if !tokenizer.isSpecial(id) { all += tokenizer.tokenBytes(id) }
            starts.append(Int32(all.count))
        }
        bytes = all
        bytesStart = starts
        let ids = (0..<V).filter { starts[$0 + 1] > starts[$0] }
        let sorted = all.withUnsafeBufferPointer { b in
            ids.sorted { x, y in
                let a = UnsafeBufferPointer(rebasing: b[Int(starts[x])..<Int(starts[x + 1])])
                let c = UnsafeBufferPointer(rebasing: b[Int(starts[y])..<Int(starts[y + 1])])
                return a.lexicographicallyPrecedes(c) || (a.elementsEqual(c) && x < y)
            }
        }
        var byte: [UInt8] = [], depth: [UInt16] = [], owner: [Int32] = []
        var path: [Int] = [0]
        var prev: ArraySlice<UInt8> = []
        var tokenNode: [Int32] = []
        var maxD = 0
        for id in sorted {
            let s = all[Int(starts[id])..<Int(starts[id + 1])]
            var l = 0
            while l < s.count && l < prev.count && s[s.startIndex + l] == prev[prev.startIndex + l] { l += 1 }
            if path.count > l + 1 { path.removeLast(path.count - l - 1) }
            for d in l..<s.count {
                byte.append(s[s.startIndex + d])
                depth.append(UInt16(d + 1))
                path.append(byte.count - 1)
            }
            tokenNode.append(Int32(path[s.count]))
            owner.append(Int32(id))
            maxD = max(maxD, s.count)
            prev = s
        }
        _ = owner
        let n = byte.count
        var skip = [Int32](repeating: Int32(n), count: n)
        var open: [Int] = []
        for i in 0..<n {
            while let last = open.last, depth[last] >= depth[i] { skip[last] = Int32(i); open.removeLast() }
            open.append(i)
        }
        var tokenStart = [Int32](repeating: 0, count: n + 1)
        for node in tokenNode { tokenStart[Int(node) + 1] += 1 }
        for i in 0..<n { tokenStart[i + 1] += tokenStart[i] }
        // `sorted` lists tokens in node order, so the CSR order is theirs.
        self.byte = byte
        self.depth = depth
        self.skip = skip
        self.tokenStart = tokenStart
        self.tokenIDs = sorted.map { Int32($0) }
        self.maxDepth = maxD
    }

    nonisolated(unsafe) private static var cache: [ObjectIdentifier: (tokenizer: Weak, trie: TokenTrie)] = [:]
    private static let lock = NSLock()
    final class Weak { weak var value: AnyObject?; init(_ v: AnyObject) { value = v } }

    /// The trie of a tokenizer, built on first use and kept while the tokenizer lives.
    static func shared(for tokenizer: any TextTokenizer) -> TokenTrie {
        let key = ObjectIdentifier(tokenizer)
        lock.lock()
        if let e = cache[key], e.tokenizer.value === tokenizer { lock.unlock(); return e.trie }
        lock.unlock()
        let t = TokenTrie(tokenizer: tokenizer)
        lock.lock()
        cache = cache.filter { $0.value.tokenizer.value != nil }
        cache[key] = (Weak(tokenizer), t)
        lock.unlock()
        return t
    }
}
