import Foundation

// SentencePiece's normalization rules as they travel in a tokenizer.json `Precompiled` normalizer: the model's
// `precompiled_charsmap`, base64 in the JSON. Layout (little-endian):
//   u32 n                  byte size of the trie
//   u32 units[n / 4]       a darts-clone double array over UTF-8 bytes; a key's value is an offset into `normalized`
//   u8  normalized[...]    the replacement strings, each ended by a NUL byte
// The `tokenizers` library applies it per extended grapheme cluster: a cluster shorter than 6 UTF-8 bytes is looked
// up whole; when that finds nothing (or the cluster is longer), each of its characters is looked up alone. A lookup
// takes the SHORTEST key that prefixes the chunk (the first common-prefix match), and the replacement stands for the
// whole chunk. That is what `tokenizers` does (not what SentencePiece's own longest-match loop does), and we follow
// `tokenizers`.

/// A SentencePiece `precompiled_charsmap`: normalization rules stored as a double-array trie.
public struct PrecompiledCharsmap: Sendable {
    private let units: [UInt32]
    private let normalized: [UInt8]

    /// Parses the raw (base64-decoded) charsmap. `reason` in the error says what is wrong.
    init(_ data: [UInt8]) throws {
        guard data.count >= 4 else { throw CausalError.invalidArgument("shorter than its 4-byte header") }
        let n = Int(data[0]) | Int(data[1]) << 8 | Int(data[2]) << 16 | Int(data[3]) << 24
        guard n % 4 == 0, n >= 4, 4 + n <= data.count else {
            throw CausalError.invalidArgument("its trie size \(n) does not fit in \(data.count - 4) bytes (or is not a multiple of 4)")
        }
        var units = [UInt32](repeating: 0, count: n / 4)
        for i in 0..<units.count {
            let o = 4 + 4 * i
            units[i] = UInt32(data[o]) | UInt32(data[o + 1]) << 8 | UInt32(data[o + 2]) << 16 | UInt32(data[o + 3]) << 24
        }
        normalized = Array(data[(4 + n)...])
        guard String(validating: normalized, as: UTF8.self) != nil else {
            throw CausalError.invalidArgument("its replacement strings are not valid UTF-8")
        }
        self.units = units
    }

    // darts-clone unit fields.
    @inline(__always) private static func hasLeaf(_ u: UInt32) -> Bool { (u >> 8) & 1 == 1 }
    @inline(__always) private static func value(_ u: UInt32) -> Int { Int(u & ((1 << 31) - 1)) }
    @inline(__always) private static func label(_ u: UInt32) -> UInt32 { u & ((1 << 31) | 0xFF) }
    @inline(__always) private static func offset(_ u: UInt32) -> Int { Int((u >> 10) << ((u & (1 << 9)) >> 6)) }

    /// The value of the shortest key that prefixes `key` (darts-clone's first common-prefix result). A NUL byte ends
    /// the key. A malformed array (an index outside it) finds nothing.
    private func firstPrefixValue<C: Collection>(_ key: C) -> Int? where C.Element == UInt8 {
        guard !units.isEmpty else { return nil }
        var pos = Self.offset(units[0])
        for c in key {
            if c == 0 { break }
            pos ^= Int(c)
            guard pos < units.count else { return nil }
            let u = units[pos]
            guard Self.label(u) == UInt32(c) else { return nil }
            pos ^= Self.offset(u)
            if Self.hasLeaf(u) {
                guard pos < units.count else { return nil }
                return Self.value(units[pos])
            }
        }
        return nil
    }

    /// The replacement for a chunk, when some key prefixes it.
    private func transform<C: Collection>(_ chunk: C) -> [UInt8]? where C.Element == UInt8 {
        guard let start = firstPrefixValue(chunk), start <= normalized.count else { return nil }
        var end = start
        while end < normalized.count && normalized[end] != 0 { end += 1 }
        return Array(normalized[start..<end])
    }

    /// Normalizes a string grapheme by grapheme, as the `tokenizers` library's Precompiled normalizer does.
    func normalize(_ s: String) -> String {
        var out: [UInt8] = []
        out.reserveCapacity(s.utf8.count)
        for g in s {
            let bytes = Array(g.utf8)
            if bytes.count < 6, let r = transform(bytes) {
                out += r
                continue
            }
            for scalar in g.unicodeScalars {
                var one: [UInt8] = []
                UTF8.encode(scalar) { one.append($0) }
                if let r = transform(one) { out += r } else { out += one }
            }
        }
        return String(decoding: out, as: UTF8.self)
    }
}
