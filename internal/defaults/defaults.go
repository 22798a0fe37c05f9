// Package defaults fills the zero fields of a configuration, for the
// WithDefaults methods of the project's Config types (each documents its
// Default... constants; Validate is separate and changes nothing).
package defaults

// Set sets *p to v when *p is its type's zero value.
func Set[T comparable](p *T, v T) {
	var zero T
	if *p == zero {
		*p = v
	}
}
