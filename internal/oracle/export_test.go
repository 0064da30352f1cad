package oracle

import (
	"testing"

	"github.com/stretchr/testify/require"
)

func TestProtect(t *testing.T) {
	in := "id,name,note\n" +
		"1,=SUM(A1),\"\"\n" +
		"2,,\"a,\"\"b\"\"\r\nc\"\n" +
		"3,\"-x,y\",@z\n" +
		"4,plain,\tTab\n"
	out, err := Protect([]byte(in), []bool{false, true, false})
	require.NoError(t, err)
	want := "id,name,note\n" +
		"1,'=SUM(A1),\"\"\n" +
		"2,,\"a,\"\"b\"\"\r\nc\"\n" +
		"3,\"'-x,y\",@z\n" +
		"4,plain,\tTab\n"
	require.Equal(t, want, string(out))

	// Without protection the CSV round-trips byte for byte.
	out, err = Protect([]byte(in), nil)
	require.NoError(t, err)
	require.Equal(t, in, string(out))

	_, err = Protect([]byte("a,\"b\n"), nil)
	require.Error(t, err)
}
