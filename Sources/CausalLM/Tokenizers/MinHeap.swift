/// An element of a binary min-heap kept in an array, ordered by `key` (BPE merge candidates).
protocol MinHeapElement {
    var key: UInt64 { get }
}

extension Array where Element: MinHeapElement {
    /// Adds `e`, keeping the smallest key at index 0.
    mutating func pushMin(_ e: Element) {
        append(e)
        var i = count - 1
        while i > 0 {
            let p = (i - 1) >> 1
            if self[p].key <= self[i].key { break }
            swapAt(p, i)
            i = p
        }
    }

    /// Removes and returns the element with the smallest key (nil when empty).
    mutating func popMin() -> Element? {
        guard let last = popLast() else { return nil }
        if isEmpty { return last }
        let top = self[0]
        self[0] = last
        var i = 0
        let n = count
        while true {
            let l = 2 * i + 1
            if l >= n { break }
            var m = l
            if l + 1 < n && self[l + 1].key < self[l].key { m = l + 1 }
            if self[i].key <= self[m].key { break }
            swapAt(i, m)
            i = m
        }
        return top
    }
}
