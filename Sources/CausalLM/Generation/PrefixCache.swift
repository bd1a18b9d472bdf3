import Foundation

/// Automatic prefix caching: the keys and values of prompts (and of finished sequences) that ran, kept by token ids
/// in a radix tree, so that a request whose prompt starts with tokens already run copies their rows into its fresh
/// cache and runs only the rest.
///
/// Each edge of the tree holds a run of token ids and a compact copy (`KVBlock`) of their positions' keys and values
/// in every layer; a path from the root spells a cached token sequence, and sequences that share a prefix share its
/// nodes (a system prompt is held once however many conversations continue it). Because a position's keys and values
/// depend only on the tokens up to it (a causal decoder, batch- and chunk-invariant kernels), a copied row is
/// bit-identical to the row the forward step would write, so a hit changes no logit.
///
/// Memory: at most `budgetBytes` of keys and values; beyond that the least recently used leaves go first (a lookup or
/// insert marks its whole path as used). Not thread-safe: the scheduler's loop thread is its only user.
///
/// Sequences run with a LoRA adapter (`SequenceRequest.adapter`) have other keys and values for the same tokens: each
/// adapter has a tree of its own (keyed by the adapter object, which the cache keeps alive so its identity is never
/// reused), and a lookup never crosses trees.
final class PrefixCache {
    let budgetBytes: Int
    let layout: KVLayout

    private final class Node {
        /// Token ids of this edge: positions `[depth, depth + tokens.count)` of every sequence through it.
        var tokens: [Int]
        var block: KVBlock?           // nil at the root only
        var children: [Int: Node] = [:]
        weak var parent: Node?
        var lastUsed: UInt64 = 0

        init(tokens: [Int], block: KVBlock?, parent: Node?) {
            self.tokens = tokens; self.block = block; self.parent = parent
        }
        var bytes: Int { block?.bytes ?? 0 }
    }

    private let root = Node(tokens: [], block: nil, parent: nil)
    /// The root of each adapter's tree, with the adapter (held, so its ObjectIdentifier stays its own).
    private var adapterRoots: [ObjectIdentifier: (owner: AnyObject, root: Node)] = [:]
    private var nodes: [ObjectIdentifier: Node] = [:]   // every node but the root
    private var clock: UInt64 = 0
    /// Bytes of keys and values held now.
    private(set) var bytes = 0
    /// Nodes dropped to stay under the budget, so far.
    private(set) var evictions = 0

    init(budgetBytes: Int, layout: KVLayout) {
        self.budgetBytes = budgetBytes
        self.layout = layout
    }

    /// Token positions held (the sum over nodes).
    var tokenCount: Int { nodes.values.reduce(0) { $0 + $1.tokens.count } }

    private func commonPrefix(_ a: [Int], _ b: ArraySlice<Int>) -> Int {
        var k = 0
        var j = b.startIndex
        while k < a.count && j < b.endIndex && a[k] == b[j] { k += 1; j += 1 }
        return k
    }

    /// Copies the rows of the longest cached prefix of `tokens[0..<limit]` into `cache` (which must be empty) and
    /// returns its length (0: a miss, the cache is untouched).
    func fill(_ cache: KVCache, tokens: [Int], limit: Int, adapter: AnyObject? = nil) -> Int {
        precondition(cache.count == 0)
        let limit = min(limit, tokens.count)
        var path: [(Node, Int)] = []
        guard var node = rootNode(adapter, create: false) else { return 0 }
        var pos = 0
        // Rows kept at another KV precision (KVPrecision.current changed since) are a miss.
        while pos < limit, let child = node.children[tokens[pos]], child.block?.precision == cache.precision {
            let k = commonPrefix(child.tokens, tokens[pos..<limit])
            path.append((child, k))
            pos += k
            if k < child.tokens.count { break }
            node = child
        }
        guard pos > 0 else { return 0 }
        clock += 1
        for (n, k) in path {
            n.block!.write(into: cache, at: cache.count, count: k)
            n.lastUsed = clock
        }
        return pos
    }

    /// Adds `tokens` (whose positions `cache` holds: `cache.count >= tokens.count`) to the tree, copying only the
    /// positions not cached yet, then evicts least recently used leaves while over the budget.
    func insert(_ tokens: [Int], from cache: KVCache, adapter: AnyObject? = nil) {
        let n = tokens.count
        precondition(!cache.isReleased && cache.count >= n)
        clock += 1
        var node = rootNode(adapter, create: true)!, pos = 0
        while pos < n {
            guard let child = node.children[tokens[pos]] else {
                // A new leaf for the rest, unless it alone could never fit.
                guard (n - pos) * bytesPerPosition(cache) <= budgetBytes else { break }
                let leaf = Node(tokens: Array(tokens[pos..<n]),
                                block: KVBlock(copying: cache, from: pos, count: n - pos, layout: layout), parent: node)
                leaf.lastUsed = clock
                node.children[tokens[pos]] = leaf
                nodes[ObjectIdentifier(leaf)] = leaf
                bytes += leaf.bytes
                break
            }
            let k = commonPrefix(child.tokens, tokens[pos..<n])
            if k < child.tokens.count && pos + k < n {
                // Diverges inside this edge: split it at k (the rows are re-cut, not recomputed).
                let block = child.block!
                let mid = Node(tokens: Array(child.tokens[..<k]), block: block.slice(from: 0, count: k), parent: node)
                mid.lastUsed = clock
                child.tokens = Array(child.tokens[k...])
                child.block = block.slice(from: k, count: block.count - k)
                child.parent = mid
                mid.children[child.tokens[0]] = child
                node.children[mid.tokens[0]] = mid
                nodes[ObjectIdentifier(mid)] = mid
                node = mid
            } else {
                child.lastUsed = clock
                node = child
            }
            pos += k
        }
        evict()
    }

    /// The root of the tree of `adapter` (nil: the base model's).
    private func rootNode(_ adapter: AnyObject?, create: Bool) -> Node? {
        guard let adapter else { return root }
        let key = ObjectIdentifier(adapter)
        if let r = adapterRoots[key] { return r.root }
        guard create else { return nil }
        let r = Node(tokens: [], block: nil, parent: nil)
        adapterRoots[key] = (adapter, r)
        return r
    }

    private func bytesPerPosition(_ cache: KVCache) -> Int { cache.layers * 2 * cache.kvDim * cache.precision.bytes }

    /// Drops least recently used leaves until the held bytes fit the budget.
    private func evict() {
        while bytes > budgetBytes {
            guard let victim = nodes.values.filter({ $0.children.isEmpty }).min(by: { $0.lastUsed < $1.lastUsed }) else { return }
            victim.parent?.children[victim.tokens[0]] = nil
            nodes[ObjectIdentifier(victim)] = nil
            bytes -= victim.bytes
            evictions += 1
        }
    }

    /// Drops everything.
    func removeAll() {
        root.children = [:]
        adapterRoots = [:]
        evictions += nodes.count
        nodes = [:]
        bytes = 0
    }
}

extension SequenceState {
    /// Choice `index` of a prompt another state has already run (n > 1): `cache` holds a copy of that prompt's
    /// positions, `promptLogprobs` its scores; the sampler (with this choice's own seed), constraint and text decoder
    /// start fresh. The caller then passes the prompt's last logits row to `consume`.
    init(choice index: Int, request r: SequenceRequest, promptCount: Int, promptLogprobs: [TokenLogprob], cache: KVCache,
         generator: Generator) {
        self.index = index
        parameters = r.parameters
        self.cache = cache
        adapter = r.adapter
        self.promptCount = promptCount
        prompt = r.prompt
        fed = r.prompt.count
        pending = []
        history = r.prompt
        sampler = Sampler(parameters: r.parameters)
        decoder = generator.tokenizer?.makeGenerationDecoder()
        constraint = r.parameters.constraint?.makeState()
        self.promptLogprobs = promptLogprobs
        if r.parameters.maxNewTokens == 0 { finish = .length }
    }
}
