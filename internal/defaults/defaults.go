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

// Number is the kinds of value Positive takes (time.Duration included).
type Number interface {
	~int | ~int32 | ~int64 | ~float64
}

// Positive sets *p to v unless *p is above zero, for a setting where a
// negative value means "unset" rather than an error.
func Positive[T Number](p *T, v T) {
	if *p <= 0 {
		*p = v
	}
}
